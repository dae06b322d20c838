// Launchers of the prunevid CUDA kernels (pv_kernels.cu). Everything runs on the given stream;
// nothing synchronises with the host, nothing allocates: the caller passes a workspace of the
// size the *_workspace_size function returns.
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

namespace pv
{

// PvDpcKnn: x [B,N,C] f32, num_valid [B] i32, num_clusters [B] i32 -> labels, centers [B,N] i32.
size_t dpc_knn_workspace_size(int32_t B, int32_t N, int32_t C);
cudaError_t dpc_knn_launch(float const* x, int32_t const* num_valid, int32_t const* num_clusters, int32_t B,
    int32_t N, int32_t C, int32_t k, int32_t* labels, int32_t* centers, void* workspace, cudaStream_t stream);

// PvGroupTopK: scores [M] f32, group_sizes [G] i32, keep_counts [G] i32 -> keep [M] i32, count [1] i32.
size_t group_topk_workspace_size(int32_t M);
cudaError_t group_topk_launch(float const* scores, int32_t M, int32_t const* group_sizes,
    int32_t const* keep_counts, int32_t G, int32_t* keep, int32_t* count, void* workspace, cudaStream_t stream);

} // namespace pv
