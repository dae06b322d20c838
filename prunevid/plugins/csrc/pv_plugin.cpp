// TensorRT IPluginV3 plugins of the prunevid ops: prunevid::PvDpcKnn and prunevid::PvGroupTopK,
// version "1" (contract v2 of prunevid/plugins/ops.py: float32 features/scores, int32 counts and
// outputs, no data-dependent output size). Loaded with IPluginRegistry::loadLibrary
// (trtexec --dynamicPlugins, Python's registry.load_library): the library exports only
// getCreators and setLoggerFinder (exports.map). enqueue launches kernels on TensorRT's stream
// and never synchronises; scratch memory is declared through getWorkspaceSize.
#include "pv_kernels.h"

#include <NvInferRuntime.h>

#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

char const* const kNamespace = "prunevid";
char const* const kVersion = "1";

ILoggerFinder* gLoggerFinder = nullptr;

void logError(std::string const& msg)
{
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, ("prunevid plugin: " + msg).c_str());
    }
}

bool linear(PluginTensorDesc const& d, DataType type)
{
    return d.format == TensorFormat::kLINEAR && d.type == type;
}

// Everything the two plugins share: capability dispatch, name space, version, no-op hooks.
class PluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime
{
public:
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }

    int32_t getNbOutputs() const noexcept override
    {
        return 2;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }

    int32_t onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) noexcept override
    {
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override
    {
        return clone();
    }

    // Both ops: three inputs, two int32 outputs.
    int32_t getOutputDataTypes(
        DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t nbInputs) const noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 2)
        {
            logError(std::string(getPluginName()) + " takes 3 inputs and gives 2 outputs");
            return -1;
        }
        outputTypes[0] = DataType::kINT32;
        outputTypes[1] = DataType::kINT32;
        return 0;
    }

    // Input 0 float32, inputs 1-2 and both outputs int32, all linear.
    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 2 || pos < 0 || pos >= 5)
        {
            return false;
        }
        return linear(inOut[pos].desc, pos == 0 ? DataType::kFLOAT : DataType::kINT32);
    }

protected:
    PluginFieldCollection mFieldsToSerialize{0, nullptr};
};

class DpcKnnPlugin final : public PluginBase
{
public:
    explicit DpcKnnPlugin(int32_t k)
        : mK(k)
    {
        mFields[0] = PluginField("k", &mK, PluginFieldType::kINT32, 1);
        mFieldsToSerialize.nbFields = 1;
        mFieldsToSerialize.fields = mFields;
    }

    char const* getPluginName() const noexcept override
    {
        return "PvDpcKnn";
    }

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) DpcKnnPlugin(mK);
    }

    // x [B, N, C] -> labels [B, N], centers [B, N]
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nbOutputs, IExprBuilder&) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 2 || inputs[0].nbDims != 3)
        {
            logError("PvDpcKnn needs x [B, N, C], num_valid [B], num_clusters [B]");
            return -1;
        }
        for (int32_t o = 0; o < 2; ++o)
        {
            outputs[o].nbDims = 2;
            outputs[o].d[0] = inputs[0].d[0];
            outputs[o].d[1] = inputs[0].d[1];
        }
        return 0;
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*,
        int32_t) const noexcept override
    {
        if (nbInputs != 3 || inputs[0].max.nbDims != 3)
        {
            return 0;
        }
        Dims const& m = inputs[0].max;
        return pv::dpc_knn_workspace_size(
            static_cast<int32_t>(m.d[0]), static_cast<int32_t>(m.d[1]), static_cast<int32_t>(m.d[2]));
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        Dims const& d = inputDesc[0].dims;
        cudaError_t err = pv::dpc_knn_launch(static_cast<float const*>(inputs[0]),
            static_cast<int32_t const*>(inputs[1]), static_cast<int32_t const*>(inputs[2]),
            static_cast<int32_t>(d.d[0]), static_cast<int32_t>(d.d[1]), static_cast<int32_t>(d.d[2]), mK,
            static_cast<int32_t*>(outputs[0]), static_cast<int32_t*>(outputs[1]), workspace, stream);
        if (err != cudaSuccess)
        {
            logError("PvDpcKnn kernel launch failed");
            return -1;
        }
        return 0;
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        return &mFieldsToSerialize;
    }

private:
    int32_t mK;
    PluginField mFields[1];
};

class GroupTopKPlugin final : public PluginBase
{
public:
    char const* getPluginName() const noexcept override
    {
        return "PvGroupTopK";
    }

    IPluginV3* clone() noexcept override
    {
        return new (std::nothrow) GroupTopKPlugin();
    }

    // scores [M] -> keep [M], count [1]
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override
    {
        if (nbInputs != 3 || nbOutputs != 2 || inputs[0].nbDims != 1)
        {
            logError("PvGroupTopK needs scores [M], group_sizes [G], keep_counts [G]");
            return -1;
        }
        outputs[0].nbDims = 1;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[1].nbDims = 1;
        outputs[1].d[0] = exprBuilder.constant(1);
        return outputs[1].d[0] != nullptr ? 0 : -1;
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*,
        int32_t) const noexcept override
    {
        if (nbInputs != 3 || inputs[0].max.nbDims != 1)
        {
            return 0;
        }
        return pv::group_topk_workspace_size(static_cast<int32_t>(inputs[0].max.d[0]));
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
        void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        int32_t const m = static_cast<int32_t>(inputDesc[0].dims.d[0]);
        int32_t const g = static_cast<int32_t>(inputDesc[1].dims.d[0]);
        cudaError_t err = pv::group_topk_launch(static_cast<float const*>(inputs[0]), m,
            static_cast<int32_t const*>(inputs[1]), static_cast<int32_t const*>(inputs[2]), g,
            static_cast<int32_t*>(outputs[0]), static_cast<int32_t*>(outputs[1]), workspace, stream);
        if (err != cudaSuccess)
        {
            logError("PvGroupTopK kernel launch failed");
            return -1;
        }
        return 0;
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        return &mFieldsToSerialize;
    }
};

class CreatorBase : public IPluginCreatorV3One
{
public:
    char const* getPluginVersion() const noexcept override
    {
        return kVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kNamespace;
    }
};

class DpcKnnCreator final : public CreatorBase
{
public:
    DpcKnnCreator()
    {
        mFields[0] = PluginField("k", nullptr, PluginFieldType::kINT32, 1);
        mCollection.nbFields = 1;
        mCollection.fields = mFields;
    }

    char const* getPluginName() const noexcept override
    {
        return "PvDpcKnn";
    }

    PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }

    IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override
    {
        bool found = false;
        int64_t k = 0;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr || std::strcmp(f.name, "k") != 0 || f.data == nullptr || f.length != 1)
            {
                continue;
            }
            if (f.type == PluginFieldType::kINT32)
            {
                k = *static_cast<int32_t const*>(f.data);
                found = true;
            }
            else if (f.type == PluginFieldType::kINT64)
            {
                k = *static_cast<int64_t const*>(f.data);
                found = true;
            }
        }
        if (!found || k < 1 || k > 0x7fffffff)
        {
            logError("PvDpcKnn needs one integer field k >= 1");
            return nullptr;
        }
        return new (std::nothrow) DpcKnnPlugin(static_cast<int32_t>(k));
    }

private:
    PluginField mFields[1];
    PluginFieldCollection mCollection{0, nullptr};
};

class GroupTopKCreator final : public CreatorBase
{
public:
    char const* getPluginName() const noexcept override
    {
        return "PvGroupTopK";
    }

    PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }

    IPluginV3* createPlugin(char const*, PluginFieldCollection const*, TensorRTPhase) noexcept override
    {
        return new (std::nothrow) GroupTopKPlugin();
    }

private:
    PluginFieldCollection mCollection{0, nullptr};
};

} // namespace

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder)
{
    gLoggerFinder = finder;
}

extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static DpcKnnCreator dpc;
    static GroupTopKCreator topk;
    static IPluginCreatorInterface* const creators[] = {&dpc, &topk};
    nbCreators = 2;
    return creators;
}
