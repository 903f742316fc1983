"""make_engine refuses SQLite URLs it cannot serve with a ValueError the commands show as one line."""

from __future__ import annotations

import pytest

from clearhouse.kit.db import make_engine


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused(url):
    with pytest.raises(ValueError, match="in-memory SQLite database"):
        make_engine(url)


def test_a_folder_that_cannot_be_made_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=f"cannot create the SQLite database's folder {blocker}/inner"):
        make_engine(f"sqlite:///{blocker}/inner/x.db")
