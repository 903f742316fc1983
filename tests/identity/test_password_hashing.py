"""Production password hashing parameters (the suite itself runs with cheap ones, see conftest)."""

from argon2 import Type
from argon2.profiles import RFC_9106_LOW_MEMORY

from clearhouse.kit.settings import Settings


def test_the_default_is_argon2id_with_rfc_9106s_low_memory_profile():
    defaults = Settings.model_fields
    assert defaults["password_hash_time_cost"].default == RFC_9106_LOW_MEMORY.time_cost
    assert defaults["password_hash_memory_kib"].default == RFC_9106_LOW_MEMORY.memory_cost
    assert defaults["password_hash_parallelism"].default == RFC_9106_LOW_MEMORY.parallelism
    assert RFC_9106_LOW_MEMORY.type is Type.ID
