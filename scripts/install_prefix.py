"""Lay class_ros out in an ament install prefix, as `colcon build --symlink-install` would, from a venv.

Usage:
    .venv/bin/python scripts/install_prefix.py [--prefix install]     (what `make install` runs)

Writes, under the prefix:
    share/ament_index/resource_index/packages/class_ros   the marker `ros2 launch` / `ros2 run` look for
    share/class_ros/{package.xml, launch/, config/}        links to the source files
    lib/class_ros/<executable>                            one script per console-script entry point of setup.py
    lib/python3.X/site-packages/{class_ros, training}      links to the source packages
    setup.bash                                            AMENT_PREFIX_PATH, PYTHONPATH and PATH for a shell

Links, not copies: an edit in the source tree is live without reinstalling (and nothing goes stale).
The executables run with this interpreter, so they see the venv's rclpy, torch and the rest.
Only the prefix is written: the venv's site-packages are left alone. Idempotent.
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "class_ros"
REPO = Path(__file__).resolve().parents[1]
SHARED = ("package.xml", "launch", "config")  # what colcon installs into share/class_ros
PYTHON_PACKAGES = ("class_ros", "training")


def console_scripts(setup_py: Path) -> dict[str, str]:
    """{executable: "module:function"} from setup.py's entry points (read, not run: setup.py calls setup())."""
    tree = ast.parse(setup_py.read_text())
    nodes = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", "") == "NODES" for t in n.targets))
    scripts = {elt.value: f"{PACKAGE}.nodes.{elt.value}:main" for elt in nodes.elts}
    for n in ast.walk(tree):  # the plain "name = module:function" strings, e.g. class-ros
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and " = " in n.value and ":" in n.value:
            name, target = (s.strip() for s in n.value.split("=", 1))
            scripts[name] = target
    return scripts


def link(target: Path, at: Path) -> None:
    """A relative symlink at `at` pointing to `target`, replacing whatever was there."""
    at.parent.mkdir(parents=True, exist_ok=True)
    if at.is_symlink() or at.is_file():
        at.unlink()
    elif at.is_dir():
        shutil.rmtree(at)
    at.symlink_to(os.path.relpath(target, at.parent))


def link_tree(source: Path, at: Path) -> None:
    """Link a file, or every file of a folder one by one (as colcon does: `ros2 launch` does not follow
    a linked folder), removing links whose source is gone."""
    if source.is_file():
        link(source, at)
        return
    if at.is_symlink() or at.is_file():
        at.unlink()
    files = {p.relative_to(source) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for old in [p for p in at.rglob("*") if p.is_symlink()] if at.is_dir() else []:
        if old.relative_to(at) not in files:
            old.unlink()
    for rel in sorted(files):
        link(source / rel, at / rel)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a small file atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def executable(target: str) -> str:
    """The text of one entry-point script run by this interpreter."""
    module, function = target.split(":")
    return (f"#!{sys.executable}\n"
            f"# class_ros entry point (scripts/install_prefix.py)\n"
            f"import sys\n\n"
            f"from {module} import {function}\n\n"
            f"if __name__ == \"__main__\":\n"
            f"    sys.exit({function}())\n")


def setup_bash(site: Path) -> str:
    """The script a user sources: this prefix first on AMENT_PREFIX_PATH and PYTHONPATH, the venv on PATH."""
    rel_site = site.relative_to(site.parents[2])  # lib/python3.X/site-packages
    return f"""# class_ros install prefix (written by scripts/install_prefix.py). Source it, as a colcon workspace's:
#   source install/setup.bash
# then `ros2 launch class_ros policy.launch.py ...` and `ros2 run class_ros <node>` find this package.
_class_ros_prefix=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
_class_ros_prepend() {{  # VAR DIR: put DIR first on the path list VAR, once
  local value="${{!1}}"
  value=":$value:"; value="${{value//:$2:/:}}"; value="${{value#:}}"; value="${{value%:}}"
  export "$1=$2${{value:+:$value}}"
}}
_class_ros_prepend AMENT_PREFIX_PATH "$_class_ros_prefix"
_class_ros_prepend PYTHONPATH "$_class_ros_prefix/{rel_site}"
_class_ros_prepend PATH "{Path(sys.executable).parent}"  # the venv: python, ros2, class-ros
unset -f _class_ros_prepend
unset _class_ros_prefix
"""


def install(prefix: Path) -> None:
    """Write (or refresh) the whole prefix."""
    prefix.mkdir(parents=True, exist_ok=True)
    write(prefix / "share/ament_index/resource_index/packages" / PACKAGE, "")
    share = prefix / "share" / PACKAGE
    for name in SHARED:
        link_tree(REPO / name, share / name)
    bindir = prefix / "lib" / PACKAGE
    scripts = console_scripts(REPO / "setup.py")
    for old in bindir.glob("*") if bindir.is_dir() else []:
        if old.name not in scripts:
            old.unlink()  # an entry point that setup.py no longer has
    for name, target in scripts.items():
        write(bindir / name, executable(target), 0o755)
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for name in PYTHON_PACKAGES:
        link(REPO / name, site / name)
    write(prefix / "setup.bash", setup_bash(site))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default=str(REPO / "install"), help="install prefix (default: install/)")
    prefix = Path(parser.parse_args().prefix).resolve()
    install(prefix)
    print(f"install_prefix: class_ros installed in {prefix}; `source {prefix}/setup.bash` to use it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
