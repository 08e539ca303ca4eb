# shellcheck shell=bash disable=SC2034
# The commit an image is built from, and its time. Sourced by scripts/build-eif.sh and scripts/reproduce.sh
# (from the repository root, after they define `log` and `die`):
#
#   build_commit ALLOW_DIRTY
#
# sets `commit` (HEAD, with "-dirty" appended when the work tree has uncommitted or untracked files;
# "unknown" outside a git checkout) and `source_date_epoch` (SOURCE_DATE_EPOCH if set, else the commit's
# time, else 0). Unless ALLOW_DIRTY is 1 it refuses a dirty work tree and a directory that is not a
# checkout: an image built from either matches no commit, so nobody could rebuild it. (The variables are
# the caller's, hence the disabled "appears unused" warning above.)
build_commit() {
    local allow_dirty="$1"
    if git rev-parse --git-dir > /dev/null 2>&1; then
        commit="$(git rev-parse HEAD)"
        source_date_epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
        if ! git diff --quiet HEAD -- 2> /dev/null || [ -n "$(git ls-files --others --exclude-standard)" ]; then
            [ "$allow_dirty" -eq 1 ] || die "the work tree has uncommitted changes; commit them, or pass --allow-dirty (the image then matches no commit)"
            log "WARNING: building from a dirty work tree; nobody can rebuild this image from a commit"
            commit="${commit}-dirty"
        fi
    else
        [ "$allow_dirty" -eq 1 ] || die "not a git checkout: the image cannot be tied to a commit (pass --allow-dirty to build anyway)"
        commit="unknown"
        source_date_epoch="${SOURCE_DATE_EPOCH:-0}"
    fi
}
