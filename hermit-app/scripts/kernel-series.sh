#!/usr/bin/env bash
# The kernel patch series: directories of `git format-patch` files, each with a `series` file
# that names them in the order they apply (one file name per line; blank lines and text after
# '#' are ignored).
#   kernel-series.sh list DIR...              the patch paths in order, after checking that every
#                                             name in each `series` is a file there and every
#                                             *.patch there is named in its `series`
#   kernel-series.sh am PRISTINE DIR...       apply the series, directory after directory, with
#                                             plain `git am` to a copy of the pristine kernel
#                                             source committed in a scratch git repository; the
#                                             machine's git identity and configuration are not used
#   kernel-series.sh repo PRISTINE DEST DIR...  the same, leaving the repository at DEST to edit:
#                                             one commit per patch, tag `pristine` on the published
#                                             source, and a tag named after each DIR on its last
#                                             patch
#   kernel-series.sh export REPO FROM TO DIR  write the commits FROM..TO of REPO into DIR with
#                                             `git format-patch` and list them in DIR/series (the
#                                             *.patch files there before are replaced; the series
#                                             file's leading comment lines are kept)
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }

# Only this script's settings: no system or user configuration, a throw-away identity.
git_env() {
    export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
    export GIT_AUTHOR_NAME="series check" GIT_AUTHOR_EMAIL="series-check@invalid"
    export GIT_COMMITTER_NAME="series check" GIT_COMMITTER_EMAIL="series-check@invalid"
}

# Prints the patches of DIR's series, in order, as paths.
list_dir() {
    local dir="$1" series name p
    [ -d "$dir" ] || die "no patch directory $dir"
    dir="$(cd "$dir" && pwd)"
    series="$dir/series"
    [ -f "$series" ] || die "$series is missing: every patch directory lists its patches in a 'series' file"
    local -A named=()
    while IFS= read -r name || [ -n "$name" ]; do
        name="${name%%#*}"
        name="$(tr -d '[:space:]' <<<"$name")"
        [ -n "$name" ] || continue
        [ -z "${named[$name]:-}" ] || die "$series names $name twice"
        [ -f "$dir/$name" ] || die "$series names $name, which is not in $dir"
        named[$name]=1
        echo "$dir/$name"
    done <"$series"
    for p in "$dir"/*.patch; do
        [ -e "$p" ] || continue
        [ -n "${named[$(basename "$p")]:-}" ] \
            || die "$p is not named in $series (add it there, in its place, or remove the file)"
    done
}

list() {
    local dir
    for dir in "$@"; do
        list_dir "$dir"
    done
}

# A git repository at DEST: the pristine source committed, then every DIR's series applied.
am_into() {
    local pristine="$1" dest="$2" dir p count
    shift 2
    [ -d "$pristine" ] || die "no pristine kernel source at $pristine"
    list "$@" >/dev/null
    pristine="$(cd "$pristine" && pwd)"
    git_env
    export GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z"
    rm -rf "$dest"
    mkdir -p "$(dirname "$dest")"
    cp -r "$pristine" "$dest"
    rm -f "$dest/.fetched"
    git -C "$dest" -c init.defaultBranch=main init -q
    git -C "$dest" add -A -f
    git -C "$dest" -c commit.gpgsign=false commit -q -m "hermit-kernel as published"
    git -C "$dest" tag pristine
    for dir in "$@"; do
        count=0
        for p in $(list_dir "$dir"); do
            git -C "$dest" -c commit.gpgsign=false am -q "$p" \
                || die "git am: $(basename "$dir")/$(basename "$p") does not apply on top of the patches before it"
            count=$((count + 1))
        done
        git -C "$dest" tag "$(basename "$dir")"
        echo "    git am: $(basename "$dir"): $count patches apply in order"
    done
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    list) list "$@" ;;
    am)
        [ $# -ge 2 ] || die "usage: kernel-series.sh am PRISTINE DIR..."
        pristine="$1"
        shift
        scratch="$(mktemp -d)"
        trap 'rm -rf "$scratch"' EXIT
        am_into "$pristine" "$scratch/kernel" "$@"
        ;;
    repo)
        [ $# -ge 3 ] || die "usage: kernel-series.sh repo PRISTINE DEST DIR..."
        have_identity=$(git config user.email || true)
        am_into "$@"
        # Commits made there need an identity: the machine's if it has one, else a placeholder.
        if [ -z "$have_identity" ]; then
            git -C "$2" config user.name "kernel series"
            git -C "$2" config user.email "kernel-series@invalid"
        fi
        tags="pristine"
        for d in "${@:3}"; do tags="$tags $(basename "$d")"; done
        echo "    repository: $2 (tags: $tags)"
        ;;
    export)
        [ $# -eq 4 ] || die "usage: kernel-series.sh export REPO FROM TO DIR"
        repo="$1" from="$2" to="$3" dir="$4"
        git_env
        mkdir -p "$dir"
        # The series file's leading comment lines are kept.
        header="$(sed -n '/^#/!q; p' "$dir/series" 2>/dev/null || true)"
        rm -f "$dir"/*.patch
        git -C "$repo" format-patch -q --no-signature --zero-commit -N -o "$(cd "$dir" && pwd)" "$from..$to"
        {
            echo "${header:-# Applied in this order (hermit-app/scripts/kernel-series.sh).}"
            (cd "$dir" && ls -- *.patch)
        } >"$dir/series"
        echo "    $dir: $(grep -vc '^#' "$dir/series") patches"
        ;;
    *) die "usage: kernel-series.sh list DIR... | am PRISTINE DIR... | repo PRISTINE DEST DIR... | export REPO FROM TO DIR" ;;
esac
