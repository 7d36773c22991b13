"""One parametrised check for the refusal matrices of the test files: each bad call raises the stated error type,
and its message holds the stated fragment (the argument's name, what was expected, what came)."""
import pytest


def refusal_test(cases):
    "A pytest test over `cases`, a list of (call, exception type, message fragment)."
    @pytest.mark.parametrize("call,exc,fragment", cases, ids=[f"bad{i}" for i in range(len(cases))])
    def test(call, exc, fragment):
        with pytest.raises(exc) as e:
            call()
        assert fragment in str(e.value), str(e.value)
    return test
