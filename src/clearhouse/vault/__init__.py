"""The vault: card and bank account numbers become tokens; the numbers are kept encrypted."""
