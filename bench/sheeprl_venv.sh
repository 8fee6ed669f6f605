#!/usr/bin/env bash
# The SheepRL bench venv (bench/dreamer_vs_sheeprl.py): sheeprl 0.8.4 with dm-control 1.0.50 on
# mujoco 3.17.0 (the DMC venv of docs/dmc.md) plus this workspace, so both sides of the
# comparison step the same DMC task code. Never the workspace venv: sheeprl and dm-control
# must not change its packages.
#
#     bash bench/sheeprl_venv.sh [VENV]     # default .venvs/sheeprl (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venvs/sheeprl}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The workspace pins with mujoco 3.17.0 (dm-control 1.0.50 is generated against it) and
# pillow 11.3.0 (sheeprl needs moviepy 2, which needs pillow < 12).
pins=(-e 's/^mujoco==4.0.0/mujoco==3.17.0/' -e 's/^pillow==.*/pillow==11.3.0/')
sed "${pins[@]}" -e '/^mujoco-core==/d' -e '/^mujoco-studio==/d' \
    constraints.txt > "$tmp/constraints.txt"
sed "${pins[@]}" requirements.txt > "$tmp/requirements.txt"
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip>=24" "setuptools>=69,<80" wheel
"$VENV/bin/python" -m pip install -q -c "$tmp/constraints.txt" -r "$tmp/requirements.txt" -e . \
    dm-control==1.0.50 dm-env==1.6 dm-tree==0.1.10 etils==1.15.0 labmaze==1.0.6 lxml==6.2.0 \
    sheeprl==0.8.4 moviepy==2.2.1 opencv-python==5.1.0.95 python-dotenv==1.2.4 \
    imageio-ffmpeg==0.8.1 proglog==0.1.12 decorator==5.3.1 pygame-ce==2.5.8
"$VENV/bin/python" -c "import sheeprl, dm_control.suite, mujoco; print('sheeprl', sheeprl.__version__, 'mujoco', mujoco.__version__)"
