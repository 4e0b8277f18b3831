# The two set-up commands of README: `make demo` and `make test`. Each builds the virtualenv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint venv clean

venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements/lock.txt pyproject.toml
	bash scripts/setup_venv.sh "$(PYTHON)" "$(VENV)"
	touch $@

demo: venv
	$(PY) scripts/demo.py --out demo_out

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint --config .hadolint.yaml Dockerfile

test: venv lint
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) demo_out ros2_ws/build ros2_ws/install ros2_ws/log
