#!/usr/bin/env bash
# Huge pages larger than 2 MiB (1 GiB here) are physically contiguous memory,
# which a machine rarely has left once it has been building for minutes: the
# one page of each of those sizes the hugetlb tests need is reserved at the
# start, while memory is fresh, and the pools are put back when CI ends.  (The tests take free
# pages first and raise a pool only by what is missing.)
#   .ci/hugepages.sh reserve STATE   |   .ci/hugepages.sh restore STATE
set -euo pipefail
state=$2
case $1 in
reserve)
    : > "$state"
    for d in /sys/kernel/mm/hugepages/hugepages-*kB; do
        [ -e "$d" ] || continue
        [ "$(basename "$d")" = hugepages-2048kB ] && continue
        old=$(cat "$d/nr_hugepages")
        echo "$d $old" >> "$state"
        echo $((old + 1)) > "$d/nr_hugepages" || true
        echo "reserved $(($(cat "$d/nr_hugepages") - old)) of 1 page in $(basename "$d")"
    done
    ;;
restore)
    [ -e "$state" ] || exit 0
    while read -r d old; do
        echo "$old" > "$d/nr_hugepages" || true
    done < "$state"
    rm -f "$state"
    ;;
esac
