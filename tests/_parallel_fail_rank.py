"""`lumina-rt ARGV...` under torchrun with one rank made to fail mid-run (tests/test_parallel.py).

The failure is injected here, in the test's own launcher, not in the library: the rank named by argv[1] raises an
InputError on its second sequence-parallel velocity call, after the other ranks have entered the collectives.
Usage: python -m torch.distributed.run ... tests/_parallel_fail_rank.py FAIL_RANK generate ENGINE_DIR ...
"""

from __future__ import annotations

import os
import sys

from lumina_rt.cli import main
from lumina_rt.engines.parallel import SequenceParallelVelocity
from lumina_rt.errors import InputError

FAIL_RANK = int(sys.argv[1])
_original = SequenceParallelVelocity.velocity
_calls = [0]


def _failing_velocity(self, *args, **kwargs):
    _calls[0] += 1
    if int(os.environ["RANK"]) == FAIL_RANK and _calls[0] == 2:
        raise InputError(f"injected failure on rank {FAIL_RANK} at velocity call 2")
    return _original(self, *args, **kwargs)


SequenceParallelVelocity.velocity = _failing_velocity
SequenceParallelVelocity.__call__ = _failing_velocity

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:]))
