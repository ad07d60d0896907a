# The two commands: `make demo` (the whole pipeline on the built-in sim) and `make test`.
# Both run `make setup` first, which is idempotent and fast once done; it ends with `make install`.
VENV := .venv
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
export MUJOCO_GL := egl
export PYOPENGL_PLATFORM := egl

.PHONY: setup install test demo bench clean

setup:
	@bash scripts/setup.sh
	@$(MAKE) --no-print-directory install

# The ament install prefix (install/, with install/setup.bash), as `colcon build --symlink-install` lays it out.
install:
	@$(VENV)/bin/python scripts/install_prefix.py --prefix install

# Two pytest-xdist workers, whole files each (a module's fixtures are built once); TEST_WORKERS=0 runs
# the suite in this one process.
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/python -m pytest test -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/class-ros demo $(DEMO_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf runs/demo .pytest_cache
