#!/bin/sh
# Starts fieldsync from this folder. Portable mode: everything it stores stays in
# fieldsync-data/ beside the program. Stop it with Ctrl+C (or by closing the window).
# Extra arguments go to `fieldsync run`.
case "$0" in
    */*) cd "${0%/*}" || exit 1 ;;
esac
exec ./fieldsync run "$@"
