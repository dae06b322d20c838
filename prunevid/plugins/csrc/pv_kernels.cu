// CUDA kernels of the prunevid ops, built on the core functions of pv_core.h.
//
// PvDpcKnn, per launch (B groups of N rows, C features):
//   1. column means of the valid rows: one thread per (group, column), rows summed in order;
//   2. centred Gram product for the upper triangle of tiles: a 64 x 64 tile per block, 16 x 16
//      threads of 4 x 4 outputs, columns staged through shared memory 16 at a time; each output
//      accumulates its columns in increasing order (the host core's order, no FMA), so every
//      y_i.y_j -- and |y_i|^2 = y_i.y_i -- has the host's bits;
//   3. distances, elementwise;
//   4. one block per group: max distance, density from the k smallest per row, delta, score, rank
//      (ties to the lower index), centres, assignment to the nearest centre.
// PvGroupTopK: one thread per token decides whether it is kept (rank in its group), then one block
// compacts the kept indices in ascending order with a block-wide prefix sum, pads with M and
// writes the count. No kernel synchronises with the host.
#include "pv_core.h"
#include "pv_kernels.h"

namespace pv
{
namespace
{

constexpr int kTile = 64;   // Gram tile edge
constexpr int kStep = 16;   // columns staged per shared-memory step
constexpr int kThreads = 256;

size_t align256(size_t bytes)
{
    return (bytes + 255) / 256 * 256;
}

struct DpcWorkspace
{
    float* mu;    // [B, C]
    float* sq;    // [B, N]
    float* dist;  // [B, N, N] (Gram product, then distances in place)
    float* rho;   // [B, N]
    float* score; // [B, N]
    int32_t* rank; // [B, N]
};

DpcWorkspace carve(void* base, int32_t B, int32_t N, int32_t C)
{
    char* p = static_cast<char*>(base);
    DpcWorkspace w;
    w.mu = reinterpret_cast<float*>(p);
    p += align256(sizeof(float) * B * C);
    w.sq = reinterpret_cast<float*>(p);
    p += align256(sizeof(float) * B * N);
    w.dist = reinterpret_cast<float*>(p);
    p += align256(sizeof(float) * B * N * N);
    w.rho = reinterpret_cast<float*>(p);
    p += align256(sizeof(float) * B * N);
    w.score = reinterpret_cast<float*>(p);
    p += align256(sizeof(float) * B * N);
    w.rank = reinterpret_cast<int32_t*>(p);
    return w;
}

__global__ void mean_kernel(float const* x, int32_t const* num_valid, int32_t N, int32_t C, float* mu)
{
    int32_t const b = blockIdx.y;
    int32_t const c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C)
    {
        return;
    }
    int32_t const n = clamp_i(num_valid[b], 0, N);
    float const* xb = x + (size_t) b * N * C;
    float s = 0.0f;
    for (int32_t i = 0; i < n; ++i)
    {
        s = mean_step(s, xb[(size_t) i * C + c]);
    }
    mu[(size_t) b * C + c] = mean_finish(s, n);
}

// blockIdx.x enumerates the tile pairs (ti <= tj) of the upper triangle, blockIdx.y the group.
__global__ void gram_kernel(float const* x, int32_t const* num_valid, int32_t N, int32_t C, float const* mu,
    float* gram, float* sq)
{
    int32_t const b = blockIdx.y;
    int32_t const n = clamp_i(num_valid[b], 0, N);
    int32_t const tiles = (N + kTile - 1) / kTile;
    int32_t ti = 0;
    int32_t rest = blockIdx.x;
    while (rest >= tiles - ti)
    {
        rest -= tiles - ti;
        ++ti;
    }
    int32_t const tj = ti + rest;
    int32_t const row0 = ti * kTile;
    int32_t const col0 = tj * kTile;
    if (row0 >= n || col0 >= n)
    {
        return;
    }
    __shared__ float a[kStep][kTile + 1];
    __shared__ float bt[kStep][kTile + 1];
    float const* xb = x + (size_t) b * N * C;
    float const* mub = mu + (size_t) b * C;
    int32_t const tx = threadIdx.x % 16;
    int32_t const ty = threadIdx.x / 16;
    float acc[4][4];
    for (int p = 0; p < 4; ++p)
    {
        for (int q = 0; q < 4; ++q)
        {
            acc[p][q] = 0.0f;
        }
    }
    for (int32_t c0 = 0; c0 < C; c0 += kStep)
    {
        // stage 64 rows x 16 columns of each side, centred (uncentred zeros past the valid rows)
        for (int e = threadIdx.x; e < kTile * kStep; e += kThreads)
        {
            int const r = e / kStep;
            int const cc = e % kStep;
            int32_t const c = c0 + cc;
            int32_t const ra = row0 + r;
            int32_t const rb = col0 + r;
            float const m = c < C ? mub[c] : 0.0f;
            a[cc][r] = (ra < n && c < C) ? sub(xb[(size_t) ra * C + c], m) : 0.0f;
            bt[cc][r] = (rb < n && c < C) ? sub(xb[(size_t) rb * C + c], m) : 0.0f;
        }
        __syncthreads();
        int const steps = (C - c0) < kStep ? (C - c0) : kStep;
        for (int cc = 0; cc < steps; ++cc)
        {
            float av[4];
            float bv[4];
            for (int p = 0; p < 4; ++p)
            {
                av[p] = a[cc][ty * 4 + p];
                bv[p] = bt[cc][tx * 4 + p];
            }
            for (int p = 0; p < 4; ++p)
            {
                for (int q = 0; q < 4; ++q)
                {
                    acc[p][q] = add(acc[p][q], mul(av[p], bv[q]));
                }
            }
        }
        __syncthreads();
    }
    float* gb = gram + (size_t) b * N * N;
    for (int p = 0; p < 4; ++p)
    {
        int32_t const i = row0 + ty * 4 + p;
        for (int q = 0; q < 4; ++q)
        {
            int32_t const j = col0 + tx * 4 + q;
            if (i < n && j < n && i <= j)
            {
                gb[(size_t) i * N + j] = acc[p][q];
                gb[(size_t) j * N + i] = acc[p][q];
                if (i == j)
                {
                    sq[(size_t) b * N + i] = acc[p][q];
                }
            }
        }
    }
}

__global__ void distance_kernel(int32_t const* num_valid, int32_t B, int32_t N, int32_t C, float const* sq, float* dist)
{
    size_t const e = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t) B * N * N)
    {
        return;
    }
    int32_t const b = (int32_t) (e / ((size_t) N * N));
    int32_t const i = (int32_t) ((e / N) % N);
    int32_t const j = (int32_t) (e % N);
    int32_t const n = clamp_i(num_valid[b], 0, N);
    if (i >= n || j >= n)
    {
        return;
    }
    float const* sqb = sq + (size_t) b * N;
    dist[e] = i == j ? 0.0f : distance(sqb[i], sqb[j], dist[e], sqrt_c(C));
}

__global__ void cluster_kernel(int32_t const* num_valid, int32_t const* num_clusters, int32_t N, int32_t k,
    DpcWorkspace w, int32_t* labels, int32_t* centers)
{
    int32_t const b = blockIdx.x;
    int32_t const n = clamp_i(num_valid[b], 0, N);
    int32_t const nc = clamp_i(num_clusters[b], 0, n);
    int32_t const kk = clamp_i(k, 1, n > 0 ? n : 1);
    float const* d = w.dist + (size_t) b * N * N;
    float* rho = w.rho + (size_t) b * N;
    float* score = w.score + (size_t) b * N;
    int32_t* rank = w.rank + (size_t) b * N;
    int32_t* lb = labels + (size_t) b * N;
    int32_t* cb = centers + (size_t) b * N;

    __shared__ float red[kThreads];
    float m = 0.0f;
    for (size_t e = threadIdx.x; e < (size_t) n * n; e += blockDim.x)
    {
        float v = d[(e / n) * N + (e % n)];
        m = v > m ? v : m;
    }
    red[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2)
    {
        if (threadIdx.x < s && red[threadIdx.x + s] > red[threadIdx.x])
        {
            red[threadIdx.x] = red[threadIdx.x + s];
        }
        __syncthreads();
    }
    float const dmax = red[0];

    for (int32_t i = threadIdx.x; i < n; i += blockDim.x)
    {
        rho[i] = density(d + (size_t) i * N, n, kk);
    }
    for (int32_t r = threadIdx.x; r < N; r += blockDim.x)
    {
        cb[r] = -1;
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x)
    {
        score[i] = mul(delta(d + (size_t) i * N, rho, i, n, dmax), rho[i]);
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < n; i += blockDim.x)
    {
        int32_t const r = rank_in(score, i, 0, n);
        rank[i] = r;
        if (r < nc)
        {
            cb[r] = i;
        }
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < N; i += blockDim.x)
    {
        lb[i] = i < n ? label_of(d, N, cb, nc, i, rank[i]) : -1;
    }
}

__global__ void keep_flag_kernel(float const* scores, int32_t M, int32_t const* group_sizes,
    int32_t const* keep_counts, int32_t G, int32_t* flags)
{
    int32_t const i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < M)
    {
        flags[i] = kept(scores, group_sizes, keep_counts, G, M, i) ? 1 : 0;
    }
}

// One block: running exclusive prefix sum of the flags, chunk by chunk, in index order.
__global__ void compact_kernel(int32_t const* flags, int32_t M, int32_t* keep, int32_t* count)
{
    __shared__ int32_t scan[kThreads];
    __shared__ int32_t base;
    if (threadIdx.x == 0)
    {
        base = 0;
    }
    __syncthreads();
    for (int32_t c0 = 0; c0 < M; c0 += kThreads)
    {
        int32_t const i = c0 + threadIdx.x;
        int32_t const f = i < M ? flags[i] : 0;
        scan[threadIdx.x] = f;
        __syncthreads();
        for (int off = 1; off < kThreads; off *= 2) // Hillis-Steele inclusive scan
        {
            int32_t v = threadIdx.x >= off ? scan[threadIdx.x - off] : 0;
            __syncthreads();
            scan[threadIdx.x] += v;
            __syncthreads();
        }
        if (f)
        {
            keep[base + scan[threadIdx.x] - 1] = i;
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            base += scan[kThreads - 1];
        }
        __syncthreads();
    }
    for (int32_t j = base + threadIdx.x; j < M; j += kThreads)
    {
        keep[j] = M;
    }
    if (threadIdx.x == 0)
    {
        count[0] = base;
    }
}

} // namespace

size_t dpc_knn_workspace_size(int32_t B, int32_t N, int32_t C)
{
    return align256(sizeof(float) * B * C) + align256(sizeof(float) * B * N) + align256(sizeof(float) * B * N * N)
        + 2 * align256(sizeof(float) * B * N) + align256(sizeof(int32_t) * B * N);
}

cudaError_t dpc_knn_launch(float const* x, int32_t const* num_valid, int32_t const* num_clusters, int32_t B,
    int32_t N, int32_t C, int32_t k, int32_t* labels, int32_t* centers, void* workspace, cudaStream_t stream)
{
    if (B <= 0 || N <= 0)
    {
        return cudaSuccess;
    }
    DpcWorkspace w = carve(workspace, B, N, C);
    if (C > 0)
    {
        mean_kernel<<<dim3((C + kThreads - 1) / kThreads, B), kThreads, 0, stream>>>(x, num_valid, N, C, w.mu);
    }
    int32_t const tiles = (N + kTile - 1) / kTile;
    // C == 0 leaves every product at 0 through the empty column loop
    gram_kernel<<<dim3(tiles * (tiles + 1) / 2, B), kThreads, 0, stream>>>(x, num_valid, N, C, w.mu, w.dist, w.sq);
    size_t const total = (size_t) B * N * N;
    distance_kernel<<<(unsigned) ((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        num_valid, B, N, C, w.sq, w.dist);
    cluster_kernel<<<B, kThreads, 0, stream>>>(num_valid, num_clusters, N, k, w, labels, centers);
    return cudaGetLastError();
}

size_t group_topk_workspace_size(int32_t M)
{
    return align256(sizeof(int32_t) * (M > 0 ? M : 1));
}

cudaError_t group_topk_launch(float const* scores, int32_t M, int32_t const* group_sizes,
    int32_t const* keep_counts, int32_t G, int32_t* keep, int32_t* count, void* workspace, cudaStream_t stream)
{
    int32_t* flags = static_cast<int32_t*>(workspace);
    if (M > 0)
    {
        keep_flag_kernel<<<(M + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
            scores, M, group_sizes, keep_counts, G, flags);
    }
    compact_kernel<<<1, kThreads, 0, stream>>>(flags, M, keep, count);
    return cudaGetLastError();
}

} // namespace pv
