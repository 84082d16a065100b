from .store import (  # noqa: F401
    _CLAIM,
    _FINISH,
    _TAKE_OVER,
    CLUSTER_CLIENT,
    LAPSE_MEMORY_MS,
    BudgetBackoff,
    BudgetExceeded,
    RedisStore,
    decode,
    encode,
    within,
)
