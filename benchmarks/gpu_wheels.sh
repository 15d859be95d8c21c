#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on a lent GPU machine whose image has torch, timm, lightning,
# pyarrow, pandas, scikit-learn and rich but not the lab's study stack (ray, optuna, mlxtend, plotly and
# what they need): downloaded here, where pip reaches the registries, for the device's Python (cp312).
#
#     bash benchmarks/gpu_wheels.sh        # writes .whl/a and .whl/b (ignored by git)
#
# Ray's wheel (~80 MB) is larger than one device call may carry (64 MiB in all), so it is cut in two:
# .whl/a holds every other wheel and Ray's first part, .whl/b its second. Two calls then carry them:
# the first carries .whl/a and runs nothing (`true`); the second, on the still-warm machine (which keeps
# ignored paths that a call does not name), carries .whl/b and runs benchmarks/gpu_check.sh, which
# joins the parts and installs the wheels into /tmp/site. The versions are this machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
# a package not installed here is left out (greenlet: SQLAlchemy needs it only for its asyncio extension)
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
# name==version of what is installed here (the tested versions), for what the device lacks
packages=()
for name in ray optuna alembic Mako colorlog SQLAlchemy greenlet mlxtend plotly jsonschema \
            jsonschema-specifications referencing rpds-py tensorboardX pydantic pydantic-core annotated-types \
            typing-inspection; do
  v=$(version "$name")
  [[ -n "$v" ]] && packages+=("$name==$v")
done
rm -rf .whl/a .whl/b .whl/download
mkdir -p .whl/a .whl/b .whl/download
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl/download "${packages[@]}"
for wheel in .whl/download/*.whl; do
  case "$(basename "$wheel")" in
    ray-*) split -n 2 -d "$wheel" ".whl/a/$(basename "$wheel").part"
           mv ".whl/a/$(basename "$wheel").part01" .whl/b/ ;;
    *) mv "$wheel" .whl/a/ ;;
  esac
done
rm -rf .whl/download
du -sh .whl/a .whl/b
