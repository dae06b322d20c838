// Host (CPU) implementation of the prunevid ops on the shared core functions of pv_core.h, with
// the argument meanings of the op table (contract v2). Loaded by prunevid/plugins/host.py through
// ctypes; also linked into the GPU check as the device kernels' reference.
// Build: g++ -std=c++17 -O2 -ffp-contract=off -fPIC -shared pv_host.cpp -o libpv_host.so
#include "pv_core.h"

#include <vector>

extern "C"
{

// PvDpcKnn on B groups: x [B,N,C] f32, num_valid [B] i32, num_clusters [B] i32, attribute k ->
// labels [B,N] i32, centers [B,N] i32. Returns 0, or -1 for negative sizes.
int pv_host_dpc_knn(float const* x, int32_t const* num_valid, int32_t const* num_clusters, int32_t B, int32_t N,
    int32_t C, int32_t k, int32_t* labels, int32_t* centers)
{
    if (B < 0 || N < 0 || C < 0)
    {
        return -1;
    }
    std::vector<float> mu(C > 0 ? C : 1);
    std::vector<float> gram((size_t) N * N + 1);
    std::vector<float> dist((size_t) N * N + 1);
    std::vector<float> sq(N + 1), rho(N + 1), score(N + 1);
    std::vector<int32_t> rank(N + 1);
    float const sqrtc = pv::sqrt_c(C);
    for (int32_t b = 0; b < B; ++b)
    {
        float const* xb = x + (size_t) b * N * C;
        int32_t* lb = labels + (size_t) b * N;
        int32_t* cb = centers + (size_t) b * N;
        int32_t const n = pv::clamp_i(num_valid[b], 0, N);
        int32_t const nc = pv::clamp_i(num_clusters[b], 0, n);
        int32_t const kk = pv::clamp_i(k, 1, n > 0 ? n : 1);
        for (int32_t c = 0; c < C; ++c)
        {
            float s = 0.0f;
            for (int32_t i = 0; i < n; ++i)
            {
                s = pv::mean_step(s, xb[(size_t) i * C + c]);
            }
            mu[c] = pv::mean_finish(s, n);
        }
        // centred Gram product for i <= j, mirrored
        for (int32_t i = 0; i < n; ++i)
        {
            for (int32_t j = i; j < n; ++j)
            {
                float g = 0.0f;
                for (int32_t c = 0; c < C; ++c)
                {
                    g = pv::dot_step(g, xb[(size_t) i * C + c], xb[(size_t) j * C + c], mu[c]);
                }
                gram[(size_t) i * N + j] = g;
                gram[(size_t) j * N + i] = g;
            }
            sq[i] = gram[(size_t) i * N + i];
        }
        float dmax = 0.0f;
        for (int32_t i = 0; i < n; ++i)
        {
            for (int32_t j = 0; j < n; ++j)
            {
                float d = i == j ? 0.0f : pv::distance(sq[i], sq[j], gram[(size_t) i * N + j], sqrtc);
                dist[(size_t) i * N + j] = d;
                dmax = d > dmax ? d : dmax;
            }
        }
        for (int32_t i = 0; i < n; ++i)
        {
            rho[i] = pv::density(&dist[(size_t) i * N], n, kk);
        }
        for (int32_t i = 0; i < n; ++i)
        {
            score[i] = pv::mul(pv::delta(&dist[(size_t) i * N], rho.data(), i, n, dmax), rho[i]);
        }
        for (int32_t r = 0; r < N; ++r)
        {
            cb[r] = -1;
        }
        for (int32_t i = 0; i < n; ++i)
        {
            rank[i] = pv::rank_in(score.data(), i, 0, n);
            if (rank[i] < nc)
            {
                cb[rank[i]] = i;
            }
        }
        for (int32_t i = 0; i < N; ++i)
        {
            lb[i] = i < n ? pv::label_of(dist.data(), N, cb, nc, i, rank[i]) : -1;
        }
    }
    return 0;
}

// PvGroupTopK: scores [M] f32, group_sizes [G] i32, keep_counts [G] i32 -> keep [M] i32 (kept
// indices ascending, then M), count [1] i32. Returns 0, or -1 for negative sizes.
int pv_host_group_topk(float const* scores, int32_t M, int32_t const* group_sizes, int32_t const* keep_counts,
    int32_t G, int32_t* keep, int32_t* count)
{
    if (M < 0 || G < 0)
    {
        return -1;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < M; ++i)
    {
        if (pv::kept(scores, group_sizes, keep_counts, G, M, i))
        {
            keep[n++] = i;
        }
    }
    count[0] = n;
    for (int32_t i = n; i < M; ++i)
    {
        keep[i] = M;
    }
    return 0;
}

} // extern "C"
