"""``poolbench`` with one more network registered: the plugin-contract test's tiny two-pool CNN.

The torchrun tests launch this file instead of ``-m poolbench`` so that their
grid (every rank, every cell) runs in seconds on two shared cores: the same
command line, the same code path, only a network small enough for a test.
"""
import sys
import textwrap

from poolbench import cli
from test_plugin_contract import NETWORK_FILE

exec(textwrap.dedent(NETWORK_FILE))  # registers "plugin_tinynet", exactly as the one-file plugin does

if __name__ == "__main__":
    sys.exit(cli.main())
