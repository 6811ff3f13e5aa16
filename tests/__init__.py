"""torchyard tests: a package, so that `from tests.conftest import ...` is the module pytest loaded, not a second copy that would make a second session store."""
