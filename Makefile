# The two commands: `make demo` (main job) and `make test` (whole suite). Both set up .venv first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

# Every process that touches ROS stays on this machine, in its own domain, logging locally:
# Fast DDS binds 127.0.0.1 and shared memory only (the profile says why SYSTEM_DEFAULT).
export ROS_AUTOMATIC_DISCOVERY_RANGE := SYSTEM_DEFAULT
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/ros2_ws/src/roboloop_node_common/config/fastdds_loopback.xml
export ROS_DOMAIN_ID ?= 42
export ROS_LOG_DIR ?= $(CURDIR)/outputs/ros_log
export MUJOCO_GL := egl
export PYTHONUNBUFFERED := 1

ROS_PKGS := $(wildcard ros2_ws/src/*/setup.py)

.PHONY: venv demo test test-slow bench lint clean docker-check

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml $(ROS_PKGS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" "setuptools>=69,<80" wheel
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements.txt -e . \
		$(foreach p,$(ROS_PKGS),-e $(dir $(p)))
	touch $@

demo: venv
	$(BIN)/python -m demo.loop

# Tests also cover the optional adapter to Meta's flow_matching (CC BY-NC 4.0, non-commercial)
# and the SB3 side of bench rl_vs_sb3 (the bench extra), and the wandb/mlflow trackers (the
# trackers extra): installed for the test run only, never needed by the workspace itself.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt flow_matching==1.0.10 -e '.[bench,trackers]'
	touch $@

# ROS tests assert real-time behaviour (a safe action within 2 control periods, message rates),
# so they run after the parallel part, alone on the machine, once the disk has written back
# what the venv install left dirty (writeback stalls made node timers miss their periods).
test: venv $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not ros and not slow"
	sync
	$(BIN)/python -m pytest -p no:xdist -m "ros and not slow"

# Learning checks that take minutes (SAC solves Pendulum-v1, PPO solves InvertedPendulum-v5).
test-slow: venv $(TEST_STAMP)
	$(BIN)/python -m pytest -p no:xdist -m slow

bench: venv
	$(BIN)/python -m bench

# Builds the workspace image and runs the compose stack for real: record, validate, train one
# epoch, serve (5-12 min cold, about 2 min warm here; as root it installs and starts the engine).
docker-check:
	bash docker/check.sh

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs demo_output
