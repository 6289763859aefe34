from relaycache import cache, invalidate


def test_result_is_cached_until_its_tag_is_invalidated(backend):
    calls = []

    @cache(backend=backend, tags=lambda n: [f"n:{n}"])
    def square(n):
        calls.append(n)
        return n * n

    assert square(3) == 9
    assert square(3) == 9
    assert calls == [3]
    invalidate(tags=["n:3"], backend=backend)
    assert square(3) == 9
    assert calls == [3, 3]
