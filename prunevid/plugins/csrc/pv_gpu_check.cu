// GPU check of the prunevid kernels against the host core (pv_host.cpp, same core functions):
// random, tied (duplicated rows / integer scores), empty, single-token and near-static cases, then
// the time of each op at PLLaVA-7B's merger size (16 groups x 144 tokens x 4096 features).
// Prints one JSON object. Build (see prunevid/trt/gpu_check.py):
//   nvcc -std=c++17 -O2 -Xcompiler -ffp-contract=off -arch=sm_XY pv_gpu_check.cu pv_kernels.cu pv_host.cpp
#include "pv_kernels.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

extern "C" int pv_host_dpc_knn(float const*, int32_t const*, int32_t const*, int32_t, int32_t, int32_t, int32_t,
    int32_t*, int32_t*);
extern "C" int pv_host_group_topk(float const*, int32_t, int32_t const*, int32_t const*, int32_t, int32_t*, int32_t*);

namespace
{

#define CHECK(call)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess)                                                                                         \
        {                                                                                                              \
            std::printf("\n{\"error\": \"%s at line %d\"}\n", cudaGetErrorString(e_), __LINE__);                        \
            std::exit(1);                                                                                              \
        }                                                                                                              \
    } while (0)

template <typename T>
T* upload(std::vector<T> const& v)
{
    T* d = nullptr;
    CHECK(cudaMalloc(&d, sizeof(T) * (v.empty() ? 1 : v.size())));
    if (!v.empty())
    {
        CHECK(cudaMemcpy(d, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice));
    }
    return d;
}

template <typename T>
std::vector<T> download(T const* d, size_t n)
{
    std::vector<T> v(n);
    if (n)
    {
        CHECK(cudaMemcpy(v.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost));
    }
    return v;
}

// Mean milliseconds of `repeats` back-to-back launches on the default stream.
template <typename Launch>
float timeLaunches(Launch launch, int repeats)
{
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
    CHECK(cudaEventRecord(start));
    for (int r = 0; r < repeats; ++r)
    {
        CHECK(launch());
    }
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms / repeats;
}

struct DpcCase
{
    int32_t B, N, C, k;
    std::vector<float> x;
    std::vector<int32_t> nv, nc;
};

DpcCase makeDpc(std::mt19937& rng, int kind, int32_t B, int32_t N, int32_t C)
{
    std::normal_distribution<float> normal;
    DpcCase c{B, N, C, 1, std::vector<float>((size_t) B * N * C), std::vector<int32_t>(B), std::vector<int32_t>(B)};
    for (auto& v : c.x)
    {
        v = normal(rng);
    }
    int32_t minValid = N;
    for (int32_t b = 0; b < B; ++b)
    {
        int32_t n = 1 + (int32_t) (rng() % N);
        if (kind == 2 && rng() % 2 == 0)
        {
            n = 0; // empty group
        }
        if (kind == 3)
        {
            n = 1; // single token
        }
        c.nv[b] = n;
        if (n > 0 && n < minValid)
        {
            minValid = n;
        }
        float* xb = &c.x[(size_t) b * N * C];
        if (kind == 1) // duplicated rows
        {
            for (int32_t i = 0; i < N; ++i)
            {
                if (rng() % 2)
                {
                    std::memcpy(xb + (size_t) i * C, xb + (size_t) (rng() % N) * C, sizeof(float) * C);
                }
            }
        }
        if (kind == 4) // near-static: one base row plus 1e-4 noise
        {
            std::vector<float> base(C);
            for (auto& v : base)
            {
                v = 10.0f * normal(rng);
            }
            for (int32_t i = 0; i < N; ++i)
            {
                for (int32_t j = 0; j < C; ++j)
                {
                    xb[(size_t) i * C + j] = base[j] + 1e-4f * normal(rng);
                }
            }
        }
        c.nc[b] = n > 0 ? 1 + (int32_t) (rng() % n) : 1;
    }
    c.k = 1 + (int32_t) (rng() % minValid);
    return c;
}

// Runs one case on both sides; returns the number of differing output elements.
long runDpc(DpcCase const& c, float* ms, int repeats)
{
    size_t const out = (size_t) c.B * c.N;
    std::vector<int32_t> hl(out), hc(out);
    pv_host_dpc_knn(c.x.data(), c.nv.data(), c.nc.data(), c.B, c.N, c.C, c.k, hl.data(), hc.data());
    float* dx = upload(c.x);
    int32_t* dnv = upload(c.nv);
    int32_t* dnc = upload(c.nc);
    int32_t *dl = nullptr, *dc = nullptr;
    void* ws = nullptr;
    CHECK(cudaMalloc(&dl, sizeof(int32_t) * out));
    CHECK(cudaMalloc(&dc, sizeof(int32_t) * out));
    CHECK(cudaMalloc(&ws, pv::dpc_knn_workspace_size(c.B, c.N, c.C)));
    CHECK(pv::dpc_knn_launch(dx, dnv, dnc, c.B, c.N, c.C, c.k, dl, dc, ws, 0));
    if (ms != nullptr)
    {
        *ms = timeLaunches([&] { return pv::dpc_knn_launch(dx, dnv, dnc, c.B, c.N, c.C, c.k, dl, dc, ws, 0); }, repeats);
    }
    CHECK(cudaDeviceSynchronize());
    std::vector<int32_t> gl = download(dl, out), gc = download(dc, out);
    long diff = 0;
    for (size_t i = 0; i < out; ++i)
    {
        diff += (gl[i] != hl[i]) + (gc[i] != hc[i]);
    }
    cudaFree(dx);
    cudaFree(dnv);
    cudaFree(dnc);
    cudaFree(dl);
    cudaFree(dc);
    cudaFree(ws);
    return diff;
}

long runTopk(std::mt19937& rng, int kind, int32_t G, int32_t maxSize, float* ms, int repeats)
{
    std::vector<int32_t> sizes(G), counts(G);
    int32_t m = 0;
    for (int32_t g = 0; g < G; ++g)
    {
        sizes[g] = (kind == 2 && rng() % 2) ? 0 : (kind == 3 ? 1 : (int32_t) (rng() % (maxSize + 1)));
        counts[g] = sizes[g] ? (int32_t) (rng() % (sizes[g] + 1)) : 0;
        m += sizes[g];
    }
    m += (int32_t) (rng() % 4);
    std::vector<float> scores(m);
    std::normal_distribution<float> normal;
    for (auto& s : scores)
    {
        s = kind == 1 ? (float) (rng() % 3) : (kind == 4 ? 0.5f + 1e-6f * normal(rng) : normal(rng));
    }
    std::vector<int32_t> hk(m > 0 ? m : 1), hn(1), gk, gn;
    pv_host_group_topk(scores.data(), m, sizes.data(), counts.data(), G, hk.data(), hn.data());
    float* ds = upload(scores);
    int32_t* dsz = upload(sizes);
    int32_t* dct = upload(counts);
    int32_t *dk = nullptr, *dn = nullptr;
    void* ws = nullptr;
    CHECK(cudaMalloc(&dk, sizeof(int32_t) * (m > 0 ? m : 1)));
    CHECK(cudaMalloc(&dn, sizeof(int32_t)));
    CHECK(cudaMalloc(&ws, pv::group_topk_workspace_size(m)));
    CHECK(pv::group_topk_launch(ds, m, dsz, dct, G, dk, dn, ws, 0));
    if (ms != nullptr)
    {
        *ms = timeLaunches([&] { return pv::group_topk_launch(ds, m, dsz, dct, G, dk, dn, ws, 0); }, repeats);
    }
    CHECK(cudaDeviceSynchronize());
    gk = download(dk, m);
    gn = download(dn, 1);
    long diff = gn[0] != hn[0];
    for (int32_t i = 0; i < m; ++i)
    {
        diff += gk[i] != hk[i];
    }
    cudaFree(ds);
    cudaFree(dsz);
    cudaFree(dct);
    cudaFree(dk);
    cudaFree(dn);
    cudaFree(ws);
    return diff;
}

} // namespace

int main(int argc, char** argv)
{
    int const cases = argc > 1 ? std::atoi(argv[1]) : 400;
    std::mt19937 rng(12345);
    char const* kinds[] = {"random", "ties", "empty", "single", "near_static"};
    std::printf("{\"dpc_knn\": {");
    for (int kind = 0; kind < 5; ++kind)
    {
        long bad = 0;
        int badCases = 0;
        for (int i = 0; i < cases; ++i)
        {
            DpcCase c = makeDpc(rng, kind, 1 + (int32_t) (rng() % 4), 1 + (int32_t) (rng() % 150),
                1 + (int32_t) (rng() % 96));
            long d = runDpc(c, nullptr, 0);
            bad += d;
            badCases += d != 0;
        }
        std::printf("%s\"%s\": {\"cases\": %d, \"cases_differing\": %d, \"elements_differing\": %ld}",
            kind ? ", " : "", kinds[kind], cases, badCases, bad);
    }
    float dpcMs = 0.0f;
    DpcCase big = makeDpc(rng, 0, 16, 144, 4096);
    for (auto& n : big.nv)
    {
        n = 144;
    }
    for (auto& n : big.nc)
    {
        n = 72;
    }
    big.k = 7;
    long bigDiff = runDpc(big, &dpcMs, 20);
    std::printf("}, \"dpc_knn_16x144x4096\": {\"ms\": %.4f, \"elements_differing\": %ld}", dpcMs, bigDiff);
    std::printf(", \"group_topk\": {");
    for (int kind = 0; kind < 5; ++kind)
    {
        long bad = 0;
        int badCases = 0;
        for (int i = 0; i < cases; ++i)
        {
            long d = runTopk(rng, kind, (int32_t) (rng() % 40), 1 + (int32_t) (rng() % 300), nullptr, 0);
            bad += d;
            badCases += d != 0;
        }
        std::printf("%s\"%s\": {\"cases\": %d, \"cases_differing\": %d, \"elements_differing\": %ld}",
            kind ? ", " : "", kinds[kind], cases, badCases, bad);
    }
    float topkMs = 0.0f;
    long topkDiff = runTopk(rng, 0, 32, 144, &topkMs, 50);
    std::printf("}, \"group_topk_32x144\": {\"ms\": %.4f, \"elements_differing\": %ld}}\n", topkMs, topkDiff);
    return 0;
}
