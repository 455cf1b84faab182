"""Tried and not kept (the patch beside it wires it into kernels/quant_gemv.py): weight rows asked of the L2
before the GEMV waits for the kernel before it, with Hopper's bulk prefetch."""
import triton
import triton.language as tl

_ALIGN = tl.constexpr(16)


@triton.jit
def _bulk_prefetch(address, nbytes):
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.b32 $0, 0; }",
        "=r,l,r", [address, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _plane_range(lane, plane: tl.constexpr, ptr, row_bytes, first, count, address, nbytes):
    start = ptr.to(tl.int64) + first.to(tl.int64) * row_bytes
    end = start + count.to(tl.int64) * row_bytes
    start = start // _ALIGN * _ALIGN
    end = (end + _ALIGN - 1) // _ALIGN * _ALIGN
    mine = lane == plane
    return tl.where(mine, start, address), tl.where(mine & (count > 0) & (row_bytes > 0), end - start, nbytes)


@triton.jit
def prefetch_rows(p0, p1, p2, p3, p4, p5, b0, b1, b2, b3, b4, b5, first, count, THREADS: tl.constexpr):
    lane = tl.arange(0, THREADS)
    address = tl.zeros([THREADS], tl.int64)
    nbytes = tl.zeros([THREADS], tl.int64)
    address, nbytes = _plane_range(lane, 0, p0, b0, first, count, address, nbytes)
    address, nbytes = _plane_range(lane, 1, p1, b1, first, count, address, nbytes)
    address, nbytes = _plane_range(lane, 2, p2, b2, first, count, address, nbytes)
    address, nbytes = _plane_range(lane, 3, p3, b3, first, count, address, nbytes)
    address, nbytes = _plane_range(lane, 4, p4, b4, first, count, address, nbytes)
    address, nbytes = _plane_range(lane, 5, p5, b5, first, count, address, nbytes)
    _bulk_prefetch(address, nbytes.to(tl.int32))


def plane_row_bytes(planes, rows):
    seen, sizes = set(), []
    for plane in planes:
        sizes.append(0 if plane.data_ptr() in seen else plane.numel() * plane.element_size() // rows)
        seen.add(plane.data_ptr())
    return tuple(sizes)
