"""Under xdist (tests/conftest.py), the emulated kernel tests run in two groups by sanitizer variant, so each
variant's build (a minute or two) is done once, by one worker, while the other variant builds beside it."""
import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name != "test_kernels_emulated.py":
            continue
        params = getattr(item, "callspec", None)
        variant = params.params.get("variant") if params else None
        if variant is None:  # asan / tsan in the test's name
            variant = next((v for v in ("asan", "tsan", "plain") if v in item.originalname), None)
        if variant:
            item.add_marker(pytest.mark.xdist_group(f"kernel_emu_{variant}"))
