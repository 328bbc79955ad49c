#!/usr/bin/env bash
# Builds the runtime image (deploy/docker/Dockerfile.runtime) without a container registry
# or a package index inside the build, the way CI builds it (tests/kafka/test_container.py):
#
#   deploy/docker/build-runtime.sh [TAG]       default TAG localhost/fraudscore:runtime
#
#   1. the fraudscore wheel, from this checkout (pip wheel --no-deps .);
#   2. a wheelhouse of what fraudscore[cpu] needs (no TensorFlow) for CPython 3.11 on x86-64
#      manylinux, downloaded by pip on this host (cached per set of declared dependencies);
#   3. the base image: $BASE_IMAGE if set (e.g. python:3.11-slim from a registry); otherwise
#      localhost/fraudscore-base:bookworm, Debian 12 minbase + python3 made by debootstrap
#      (needs root) and imported (the root file system is cached as a tarball);
#   4. the build, with the wheelhouse as its whole context.
# Podman runs with runc and explicit ulimits (docs/containers.md says why); nothing in /etc
# is changed. The last line of stdout is the image's tag; the tools' output is in the logs
# under $FRAUDSCORE_CACHE/containers (default ~/.cache/fraudscore/containers).
#
# Environment:
#   BASE_IMAGE         base image to build on (default: the debootstrap base above)
#   CONTAINER_ENGINE   podman (default) or docker
#   DEBIAN_MIRROR      mirror for debootstrap (default http://deb.debian.org/debian)
#   PYTHON             Python whose pip builds the wheel and the wheelhouse (default .venv/bin/python)
#   FRAUDSCORE_CACHE   cache directory (default ${XDG_CACHE_HOME:-~/.cache}/fraudscore)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

tag="${1:-localhost/fraudscore:runtime}"
engine="${CONTAINER_ENGINE:-podman}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
python="${PYTHON:-.venv/bin/python}"
cache="${FRAUDSCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudscore}/containers"
base="${BASE_IMAGE:-}"
default_base=localhost/fraudscore-base:bookworm
mkdir -p "$cache"

say() { echo "build-runtime: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Runs "$@" with its output in $cache/$1.log; on failure shows the end of it.
logged() {
  local name="$1"
  shift
  if ! "$@" >"$cache/$name.log" 2>&1; then
    tail -n 40 "$cache/$name.log" >&2
    die "$* failed (all of its output: $cache/$name.log)"
  fi
}

command -v "$engine" >/dev/null || die "$engine is not installed (Debian: apt-get install podman runc debootstrap; scripts/setup.sh does it with FRAUDSCORE_CONTAINERS=1)"
[[ -x "$python" ]] || die "$python not found: run scripts/setup.sh first, or set PYTHON"
engine_flags=()
build_flags=(--network host)
if [[ "$engine" == podman ]]; then
  # runc, and ulimits podman can set: crun cannot raise RLIMIT_NOFILE/NPROC to podman's defaults
  # on these hosts, and rejects a hybrid cgroup layout. --format docker keeps the HEALTHCHECK.
  engine_flags=(--runtime runc)
  build_flags+=(--format docker --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
fi
eng() { "$engine" "${engine_flags[@]}" "$@"; }
t0=$SECONDS

# --- 1 and 2: the wheelhouse (dependencies cached; fraudscore built each time), in a build
# context of this run's own
context="$(mktemp -d "${TMPDIR:-/tmp}/fraudscore-context.XXXXXX")"
rootfs=""
trap 'rm -rf "$context" ${rootfs:+"$rootfs"}' EXIT
mkdir -p "$context/wheels"
logged wheel "$python" -m pip wheel --disable-pip-version-check --progress-bar off --no-deps -w "$context/wheels" .
own_wheel="$(ls "$context"/wheels/fraudscore-*.whl)"
# A package missing from pyproject.toml's list is missing from the wheel (an editable install
# does not show it): name it here rather than as an ImportError inside the container.
lost="$("$python" - "$own_wheel" <<'EOF'
import sys, zipfile
from pathlib import Path
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
for top, inside in {"runtime": "fraudscore", "train": "fraudscore/train", "export": "fraudscore/export",
                    "bench": "fraudscore/bench"}.items():
    for init in sorted(Path(top).rglob("__init__.py")):
        if (Path(inside) / init.relative_to(top)).as_posix() not in names:
            print(init.parent)
EOF
)"
[[ -z "$lost" ]] || die "the fraudscore wheel lacks the package(s) in $(echo $lost); list them under [tool.setuptools] packages in pyproject.toml"
# Keyed by the wheel's declared dependencies, so that an edit elsewhere in pyproject.toml keeps it.
requires="$("$python" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
print("\n".join(sorted(l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist"))))' "$own_wheel")"
wheelhouse="$cache/wheelhouse-$(echo "$requires" | sha256sum | cut -c1-16)"
if [[ ! -f "$wheelhouse/.complete" ]]; then
  say "downloading the wheels fraudscore[cpu] needs into $wheelhouse"
  rm -rf "$wheelhouse"
  # Every manylinux tag Debian 12 (glibc 2.36) runs: pip takes --platform literally.
  platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  logged wheelhouse "$python" -m pip download --disable-pip-version-check --progress-bar off \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
    -d "$wheelhouse" "$own_wheel[cpu]"
  rm -f "$wheelhouse"/fraudscore-*.whl
  touch "$wheelhouse/.complete"
fi
find "$cache" -maxdepth 1 -name 'wheelhouse-*' ! -path "$wheelhouse" -exec rm -rf {} +  # older sets
cp "$wheelhouse"/*.whl "$context/wheels/"
say "wheelhouse: $(ls "$context/wheels" | wc -l) wheels, $(du -sm "$context/wheels" | cut -f1) MB"

# --- 3: the base image
if [[ -z "$base" ]]; then
  base="$default_base"
  if ! eng image inspect "$base" >/dev/null 2>&1; then
    rootfs_tar="$cache/debian-bookworm-python3.tar"
    if [[ ! -f "$rootfs_tar" ]]; then
      [[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root; run as root, or set BASE_IMAGE to an image with Python 3.11 (python:3.11-slim)"
      command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
      say "making $base with debootstrap from $mirror (about a minute)"
      rootfs="$(mktemp -d "${TMPDIR:-/tmp}/fraudscore-rootfs.XXXXXX")"
      logged debootstrap debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror"
      # What an image does not need: downloaded packages, package lists, manuals, translations
      # and documentation (the copyright files stay).
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
      find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
      tar -C "$rootfs" -cf "$rootfs_tar.partial" .
      mv "$rootfs_tar.partial" "$rootfs_tar"
      rm -rf "$rootfs"
      rootfs=""
    fi
    logged import eng import --change 'CMD ["/bin/bash"]' "$rootfs_tar" "$base"
  fi
fi
say "base image: $base"

# --- 4: the build
previous="$(eng image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
logged build eng build "${build_flags[@]}" --build-arg "BASE_IMAGE=$base" \
  -f deploy/docker/Dockerfile.runtime -t "$tag" "$context"
# The first stage's image (venv + wheelhouse) is left untagged; each build would add one.
eng image prune --force --filter label=fraudscore.stage=install >/dev/null
# The image this tag named before, now untagged (kept if a container still uses it).
if [[ -n "$previous" && "$previous" != "$(eng image inspect --format '{{.Id}}' "$tag")" ]]; then
  eng rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(eng image inspect --format '{{.Size}}' "$tag")
say "built $tag: $((size / 1000000)) MB, in $((SECONDS - t0)) s"
echo "$tag"
