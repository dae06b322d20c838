// Core arithmetic of the prunevid custom ops (contract v2, see prunevid/plugins/ops.py), shared by
// the host library that Python calls through ctypes (pv_host.cpp) and the CUDA kernels
// (pv_kernels.cu). Every function here is compiled for both sides from this one text.
//
// Float arithmetic goes through pv::add/sub/mul/div/sqrt_: on the device these are the _rn
// intrinsics (never contracted into an FMA), on the host plain operators compiled with
// -ffp-contract=off, so a sum accumulated in the same order gives the same bits on both sides.
// The only function whose result may differ by an ulp between host and device is expf (density).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define PV_HD __host__ __device__ __forceinline__
#else
#define PV_HD inline
#endif

namespace pv
{

PV_HD float add(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

PV_HD float sub(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

PV_HD float mul(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

PV_HD float div(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

PV_HD float sqrt_(float a)
{
#if defined(__CUDA_ARCH__)
    return __fsqrt_rn(a);
#else
    return sqrtf(a);
#endif
}

PV_HD int32_t clamp_i(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

// ---------------------------------------------------------------------------------------------
// PvDpcKnn, one group of n valid rows (a prefix of N rows of C features)
// ---------------------------------------------------------------------------------------------

// One step of the per-column mean: rows are summed in increasing row order.
PV_HD float mean_step(float acc, float x_ic)
{
    return add(acc, x_ic);
}

// mu_c = (sum over the n valid rows) / n, in float32; 0 for an empty group.
PV_HD float mean_finish(float sum, int32_t n)
{
    return n > 0 ? div(sum, (float) n) : 0.0f;
}

// One step of the centred dot product y_i.y_j, columns summed in increasing column order.
PV_HD float dot_step(float acc, float x_ic, float x_jc, float mu_c)
{
    return add(acc, mul(sub(x_ic, mu_c), sub(x_jc, mu_c)));
}

// sqrt(C) in float32, as every implementation computes it.
PV_HD float sqrt_c(int32_t c)
{
    return sqrt_((float) c);
}

// d_ij from |y_i|^2, |y_j|^2 and y_i.y_j: sqrt(max(sq_i + sq_j - 2 g, 0)) / sqrt(C).
PV_HD float distance(float sq_i, float sq_j, float g, float sqrtc)
{
    float d2 = sub(add(sq_i, sq_j), mul(2.0f, g));
    return div(sqrt_(d2 > 0.0f ? d2 : 0.0f), sqrtc);
}

// rho_i = exp(-mean of the kk smallest d_ij^2 over the valid j, i itself included); the squares
// are summed in ascending order of d (the order of a sorted top-k).
PV_HD float density(float const* row, int32_t n, int32_t kk)
{
    float sum = 0.0f;
    float last = -1.0f; // distances are >= 0
    int32_t remaining = kk;
    while (remaining > 0)
    {
        float v = INFINITY;
        int32_t count = 0;
        for (int32_t j = 0; j < n; ++j)
        {
            float d = row[j];
            if (d > last)
            {
                if (d < v)
                {
                    v = d;
                    count = 1;
                }
                else if (d == v)
                {
                    ++count;
                }
            }
        }
        if (count == 0)
        {
            break;
        }
        int32_t take = count < remaining ? count : remaining;
        for (int32_t t = 0; t < take; ++t)
        {
            sum = add(sum, mul(v, v));
        }
        remaining -= take;
        last = v;
    }
    return expf(-div(sum, (float) kk));
}

// delta_i = min d_ij over valid j with rho_j > rho_i (strictly), else the group's max distance.
PV_HD float delta(float const* row, float const* rho, int32_t i, int32_t n, float dmax)
{
    float best = dmax;
    float ri = rho[i];
    for (int32_t j = 0; j < n; ++j)
    {
        if (rho[j] > ri && row[j] < best)
        {
            best = row[j];
        }
    }
    return best;
}

// Number of valid j ranked ahead of i: higher value, or an equal value and a lower index.
PV_HD int32_t rank_in(float const* values, int32_t i, int32_t begin, int32_t end)
{
    float vi = values[i];
    int32_t r = 0;
    for (int32_t j = begin; j < end; ++j)
    {
        float vj = values[j];
        r += (vj > vi || (vj == vi && j < i)) ? 1 : 0;
    }
    return r;
}

// Slot of the nearest centre to row i (first slot on ties); dist is the group's N x N matrix.
PV_HD int32_t nearest_center(float const* dist, int32_t stride, int32_t const* centers, int32_t nc, int32_t i)
{
    int32_t best = -1;
    float best_d = INFINITY;
    for (int32_t r = 0; r < nc; ++r)
    {
        float d = dist[(int64_t) centers[r] * stride + i];
        if (best < 0 || d < best_d)
        {
            best = r;
            best_d = d;
        }
    }
    return best;
}

// Label of valid row i given its rank: a centre takes its own slot, others the nearest centre.
PV_HD int32_t label_of(float const* dist, int32_t stride, int32_t const* centers, int32_t nc, int32_t i, int32_t rank)
{
    return rank < nc ? rank : nearest_center(dist, stride, centers, nc, i);
}

// ---------------------------------------------------------------------------------------------
// PvGroupTopK
// ---------------------------------------------------------------------------------------------

// The group of token i: consecutive groups of group_sizes[g] tokens (negative sizes count as 0),
// clipped to the M scores that exist (sizes adding up past M never make a group reach past them).
// Sets [begin, end) and returns g, or G when i lies past the last group.
PV_HD int32_t group_of(int32_t const* group_sizes, int32_t G, int32_t M, int32_t i, int32_t* begin, int32_t* end)
{
    int64_t start = 0; // int64: the sizes are data and may add up past int32
    for (int32_t g = 0; g < G && start < M; ++g)
    {
        int64_t size = group_sizes[g] > 0 ? group_sizes[g] : 0;
        if (i < start + size)
        {
            *begin = (int32_t) start;
            *end = (int32_t) (start + size < M ? start + size : M);
            return g;
        }
        start += size;
    }
    *begin = (int32_t) (start < M ? start : M);
    *end = *begin;
    return G;
}

// Whether token i (< M) is kept: among the keep_counts[g] best scores of its group (ties to the
// lower index); tokens past the last group are never kept.
PV_HD bool kept(
    float const* scores, int32_t const* group_sizes, int32_t const* keep_counts, int32_t G, int32_t M, int32_t i)
{
    int32_t begin = 0;
    int32_t end = 0;
    int32_t g = group_of(group_sizes, G, M, i, &begin, &end);
    if (g >= G)
    {
        return false;
    }
    return rank_in(scores, i, begin, end) < keep_counts[g];
}

} // namespace pv
