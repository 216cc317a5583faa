#!/bin/sh
# Starts fieldsync from this folder. Portable mode: everything it stores stays in
# fieldsync-data/ beside the program. Stop it with Ctrl+C (or by closing the window).
cd "$(dirname "$0")" || exit 1
exec ./fieldsync run "$@"
