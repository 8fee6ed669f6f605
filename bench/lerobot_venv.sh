#!/usr/bin/env bash
# The LeRobot bench venv (bench/lerobot_reader.py): lerobot 0.4.4 (Apache-2.0) and the versions
# it resolved to here, so that LeRobot's own reader loads our LeRobotDataset v3 exports. Never
# the workspace venv: lerobot brings its own torch, datasets and pandas (~8 GB with CUDA torch).
# Only numpy is shared with the workspace side (the bench's worker imports nothing else of ours).
#
#     bash bench/lerobot_venv.sh [VENV]     # default .venvs/lerobot (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venvs/lerobot}
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q lerobot==0.4.4 torch==2.10.0 torchvision==0.25.0 \
    torchcodec==0.10.0 datasets==4.8.5 pandas==3.1.1 pyarrow==26.0.1 av==15.1.0 numpy==2.2.6 \
    huggingface-hub==0.35.3
"$VENV/bin/python" -c "import lerobot, torch; print('lerobot', lerobot.__version__, 'torch', torch.__version__)"
