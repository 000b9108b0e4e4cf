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
