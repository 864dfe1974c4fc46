"""The vectorized and compiled DPP tiers against the float64 reference (shared DPPTierTester)."""
import pytest

from dpp_tester import DPPTierTester
from poolbench.verify.check import CASES, GRADCHECK_CASES


class TestVectorized(DPPTierTester):
    tier = "vectorized"


class TestReferenceAgainstItself(DPPTierTester):
    """The reference must also satisfy the shared contract (shape, gradcheck, functional == module)."""

    tier = "reference"


@pytest.mark.slow
class TestCompiledFull(DPPTierTester):
    """Every case under torch.compile: minutes of compilation on 2 cores, so only with -m slow."""

    tier = "compiled"


class TestCompiledQuick(DPPTierTester):
    """One case per property under torch.compile for the default run (eager == compiled vs reference)."""

    tier = "compiled"
    cases = CASES[:1]
    gradcheck_cases = GRADCHECK_CASES[:1]
