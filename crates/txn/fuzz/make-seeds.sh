#!/bin/sh
# Regenerates the seed corpus of the `commit` target: overlays that qemu-img and qemu-io
# made over /tmp/imgtx-fz/base.raw (the base path the fuzz body uses), in several cluster
# sizes and feature sets, plus tampered copies. Run from crates/txn/fuzz.
set -eu
out=corpus/commit
dir=/tmp/imgtx-fz
mkdir -p "$out" "$dir"
base=$dir/base.raw
head -c 131072 /dev/urandom > "$base"
make() { # name create-options qemu-io-commands...
    name=$1; opts=$2; shift 2
    ov=$dir/$name.qcow2
    rm -f "$ov"
    qemu-img create -q -f qcow2 -o "$opts" -b "$base" -F raw "$ov"
    for c in "$@"; do qemu-io -f qcow2 -c "$c" "$ov" >/dev/null; done
    cp "$ov" "$out/seed-$name"
}
make empty-64k cluster_size=65536
make data-64k cluster_size=65536 'write -P 0xab 0 4k' 'write -P 0xcd 70k 8k'
make zero-64k cluster_size=65536 'write -z 0 64k' 'write -P 0x11 64k 512'
make data-512 cluster_size=512 'write -P 0xab 512 1k' 'write -z 8k 2k' 'write -P 0x22 100k 3k'
make data-4k cluster_size=4096 'write -P 0x33 0 12k' 'discard 4k 4k' 'write -z 64k 8k'
make compressed-zlib cluster_size=4096 'write -c -P 0x44 0 4k' 'write -c -P 0x45 8k 4k'
make compressed-zstd cluster_size=4096,compression_type=zstd 'write -c -P 0x46 0 4k' 'write -P 0x47 16k 4k'
make extl2 cluster_size=16384,extended_l2=on 'write -P 0x55 2k 1k' 'write -z 40k 2k'
make v2 cluster_size=65536,compat=0.10 'write -P 0x66 0 2k'
make grown cluster_size=4096 'write -P 0x77 0 4k'
qemu-img resize -q -f qcow2 "$dir/grown.qcow2" 192K
qemu-io -f qcow2 -c 'write -P 0x78 160k 4k' "$dir/grown.qcow2" >/dev/null
cp "$dir/grown.qcow2" "$out/seed-grown"
# Tampered copies (offsets from the qcow2 header, docs/interop/qcow2.rst).
patch() { # name from offset hex-bytes
    cp "$out/seed-$2" "$out/seed-$1"
    printf "$4" | dd of="$out/seed-$1" bs=1 seek="$3" conv=notrunc status=none
}
patch backing-redirect data-64k 0 'QFI\373'
off=$(od -An -tu8 -j8 -N8 --endian=big "$out/seed-data-64k" | tr -d ' ')
cp "$out/seed-data-64k" "$out/seed-backing-victim"
printf '/tmp/imgtx-fz/victim.raw' | dd of="$out/seed-backing-victim" bs=1 seek="$off" conv=notrunc status=none
printf '\0\0\0\030' | dd of="$out/seed-backing-victim" bs=1 seek=16 conv=notrunc status=none
patch huge-l1 data-64k 36 '\177\377\377\377'
patch cluster-bits-31 data-64k 20 '\0\0\0\037'
patch incompat-bit data-64k 72 '\200\0\0\0\0\0\0\0'
patch encrypted data-64k 32 '\0\0\0\001'
patch version-4 data-64k 4 '\0\0\0\004'
patch vsize-2-62 data-64k 24 '\100\0\0\0\0\0\0\0'
head -c 300 "$out/seed-data-64k" > "$out/seed-truncated"
rm -f "$out/seed-backing-redirect"
# Host clusters shared by two L2 entries (case T17 of docs/crash-safety.md), patched into copies of the seeds
# above: each must be refused before the commit point.
u32() { od -An -tu4 -j"$2" -N4 --endian=big "$1" | tr -d ' '; }
l2e() { # file cluster entry-size: host offset of the cluster's L2 entry (L1 entry 0's table)
    l1=$(u32 "$1" 44)
    l2=$(($(u32 "$1" $((l1 + 4))) & 0xfffffe00))
    echo $((l2 + $2 * $3))
}
put64() { printf '%08x%08x' "$3" "$4" | xxd -r -p | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
share() { # name from entry-size from-cluster to-cluster
    cp "$out/seed-$2" "$out/seed-$1"
    s=$(l2e "$out/seed-$1" "$4" "$3")
    d=$(l2e "$out/seed-$1" "$5" "$3")
    dd if="$out/seed-$1" of="$out/seed-$1" bs=1 skip="$s" seek="$d" count="$3" conv=notrunc status=none
}
share shared-data-64k data-64k 8 0 1
share shared-data-4k data-4k 8 0 8
share shared-extl2 extl2 16 0 3
f=$out/seed-shared-zero-alloc-4k
cp "$out/seed-data-4k" "$f"
put64 "$f" "$(l2e "$f" 9 8)" 0x80000000 $(($(u32 "$f" $(($(l2e "$f" 0 8) + 4))) | 1))
f=$out/seed-shared-compressed-and-data-4k
cp "$out/seed-compressed-zlib" "$f"
c=$(u32 "$f" $(($(l2e "$f" 0 8) + 4)))
put64 "$f" "$(l2e "$f" 5 8)" 0x80000000 $((c & 0xfffff000))
