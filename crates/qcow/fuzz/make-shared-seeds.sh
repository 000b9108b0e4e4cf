#!/bin/sh
# Writes the host-cluster sharing seeds of the `image` target (case T17 of docs/crash-safety.md): small images
# made by qemu-img and qemu-io, then one L2 entry patched so that two entries share a host
# cluster (refused by Image::map), plus qemu's own packed compressed clusters (accepted).
# Needs qemu-img, qemu-io, od and xxd. Run from crates/qcow/fuzz.
set -eu
out=corpus/image
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# u32 at byte offset $2 of file $1 (big-endian, as all of qcow2).
u32() { od -An -tu4 -j"$2" -N4 --endian=big "$1" | tr -d ' '; }
# Host offset of the L2 entry of guest cluster $2 in L1 entry 0's table, entries of $3
# bytes (the images are far below 4 GiB, so offsets fit the low word).
l2e() {
    l1=$(u32 "$1" 44)
    l2=$(($(u32 "$1" $((l1 + 4))) & 0xfffffe00))
    echo $((l2 + $2 * $3))
}
# Writes the 64-bit value hi:lo at byte offset $2 of file $1.
put64() { printf '%08x%08x' "$3" "$4" | xxd -r -p | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
# Copies the L2 entry of guest cluster $3 over that of guest cluster $4 (entry size $2).
alias() {
    s=$(l2e "$1" "$3" "$2")
    d=$(l2e "$1" "$4" "$2")
    dd if="$1" of="$1" bs=1 skip="$s" seek="$d" count="$2" conv=notrunc status=none
}
make() { # name create-options qemu-io-commands...
    name=$1; opts=$2; shift 2
    img=$dir/$name
    qemu-img create -q -f qcow2 -o "$opts" "$img" 256K
    for c in "$@"; do qemu-io -f qcow2 -c "$c" "$img" >/dev/null; done
}
make data-512 cluster_size=512 'write -P 0x11 0 1k' 'write -P 0x22 4k 512'
alias "$dir/data-512" 8 0 5
cp "$dir/data-512" "$out/shared-data-512"

make zero-512 cluster_size=512 'write -P 0x11 0 1k'
e=$(l2e "$dir/zero-512" 0 8)
put64 "$dir/zero-512" "$(l2e "$dir/zero-512" 6 8)" 0x80000000 $(($(u32 "$dir/zero-512" $((e + 4))) | 1))
cp "$dir/zero-512" "$out/shared-zero-alloc-512"

make extl2 cluster_size=16384,extended_l2=on 'write -P 0x33 2k 1k' 'write -P 0x34 32k 512'
alias "$dir/extl2" 16 0 3
cp "$dir/extl2" "$out/shared-extl2-16k"

make compressed cluster_size=4096 'write -c -P 0x44 0 4k' 'write -c -P 0x45 4k 4k' 'write -P 0x46 16k 4k'
cp "$dir/compressed" "$out/qemu-4k-compressed-packed"
# A data entry (cluster 4's, COPIED) pointing at the host cluster of cluster 0's compressed
# bytes; with 4 KiB clusters the compressed offset is the low 58 bits.
c=$(u32 "$dir/compressed" $(($(l2e "$dir/compressed" 0 8) + 4)))
put64 "$dir/compressed" "$(l2e "$dir/compressed" 4 8)" 0x80000000 $((c & 0xfffff000))
cp "$dir/compressed" "$out/shared-compressed-and-data-4k"
