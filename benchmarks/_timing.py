"""The one timer of the benchmarks: the best of a few runs after a warm-up (ratios, never asserts)."""
import time


def best_of(fn, repeats: int = 3, warm_up: bool = True) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` (after one untimed call when ``warm_up``).

    The first call pays for allocations and for setting up autograd or forward-mode AD; the minimum
    over repeats is the least disturbed by other work on a shared machine.
    """
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
