"""Run a stdio MCP server unchanged, appending every message it receives to a file.

``python stdio_tee.py LOG ARGV...``: what the client writes to our stdin goes to the log, then
to the server's stdin; the server's stdout and stderr are ours. A test reads the log to prove
what did (or did not) reach a third-party server.
"""

import subprocess
import sys

with open(sys.argv[1], "ab", buffering=0) as log:
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE)
    assert child.stdin is not None
    for line in sys.stdin.buffer:
        log.write(line)
        child.stdin.write(line)
        child.stdin.flush()
    child.stdin.close()
    sys.exit(child.wait())
