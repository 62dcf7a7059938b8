#!/usr/bin/env bash
# Set up (first run only), lint, and run the test suite. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/../pipelines/env.sh"
# The report's browser test needs Chromium; install it where we may, else it skips.
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
    timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
        >/dev/null 2>&1 || echo "chromium not installed: browser test will skip"
fi
# The SSH launcher's test needs an OpenSSH server (it starts its own on 127.0.0.1);
# install it where we may, else that test skips with its reason. (The Slurm test
# installs and sets up Slurm itself, the same way.)
if [ "$(id -u)" = 0 ] && ! command -v sshd >/dev/null && ! [ -x /usr/sbin/sshd ] \
    && command -v apt-get >/dev/null; then
    timeout 300 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        openssh-server >/dev/null 2>&1 || echo "openssh-server not installed: SSH test will skip"
fi
ruff check .
ruff format --check .
exec python -m pytest "$@"
