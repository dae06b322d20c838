// CPU-only probe of a built plugin library: dlopen it the way IPluginRegistry::loadLibrary does
// (setLoggerFinder, getCreators) and drive every method that needs no GPU. Prints one JSON object
// that tests/test_plugin_library.py checks against the op table.
// Build: g++ -std=c++17 -isystem <TensorRT include> -isystem <CUDA include> pv_probe.cpp -ldl
// Usage: pv_probe LIB.so
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

// --- a test IExprBuilder: constants and symbols, enough for shape propagation --------------------

class DimImpl : public apiv::VDimensionExpr
{
public:
    DimImpl(bool constant, int64_t value)
        : mConstant(constant)
        , mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mConstant;
    }
    int64_t getConstantValue() const override
    {
        return mConstant ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    bool mConstant;
    int64_t mValue;
};

class Dim : public IDimensionExpr
{
public:
    Dim(bool constant, int64_t value)
        : mStore(constant, value)
    {
        mImpl = &mStore;
    }

private:
    DimImpl mStore;
};

class BuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        mDims.emplace_back(new Dim(true, value));
        return mDims.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        ++operations;
        mDims.emplace_back(new Dim(false, 0));
        return mDims.back().get();
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        ++sizeTensors;
        mDims.emplace_back(new Dim(false, 0));
        return mDims.back().get();
    }
    IDimensionExpr const* symbol()
    {
        mDims.emplace_back(new Dim(false, 0));
        return mDims.back().get();
    }
    int operations = 0;
    int sizeTensors = 0;

private:
    std::vector<std::unique_ptr<Dim>> mDims;
};

class Builder : public IExprBuilder
{
public:
    explicit Builder(BuilderImpl* impl)
    {
        mImpl = impl;
    }
};

class Logger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            messages.push_back(msg);
        }
    }
    std::vector<std::string> messages;
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &logger;
    }
    Logger logger;
};

std::string quote(std::string const& s)
{
    std::string out = "\"";
    for (char c : s)
    {
        if (c == '"' || c == '\\')
        {
            out += '\\';
        }
        out += c;
    }
    return out + "\"";
}

char const* typeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    case DataType::kINT64: return "int64";
    default: return "other";
    }
}

char const* fieldTypeName(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kINT32: return "int32";
    case PluginFieldType::kINT64: return "int64";
    case PluginFieldType::kFLOAT32: return "float32";
    case PluginFieldType::kCHAR: return "char";
    default: return "other";
    }
}

DynamicPluginTensorDesc desc(DataType type, int32_t rank)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = rank;
    for (int32_t i = 0; i < rank; ++i)
    {
        d.desc.dims.d[i] = 4;
    }
    d.min = d.max = d.opt = d.desc.dims;
    return d;
}

std::string fields(PluginFieldCollection const* fc)
{
    std::ostringstream os;
    os << "[";
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        os << (i ? "," : "") << "{\"name\":" << quote(f.name ? f.name : "") << ",\"type\":"
           << quote(fieldTypeName(f.type)) << ",\"length\":" << f.length;
        if (f.data != nullptr && f.type == PluginFieldType::kINT32 && f.length == 1)
        {
            os << ",\"value\":" << *static_cast<int32_t const*>(f.data);
        }
        os << "}";
    }
    return os.str() + "]";
}

// Everything about one plugin instance that needs no GPU.
std::string describePlugin(IPluginV3* plugin, int32_t inputRank0)
{
    std::ostringstream os;
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    os << "{\"name\":" << quote(core->getPluginName()) << ",\"version\":" << quote(core->getPluginVersion())
       << ",\"namespace\":" << quote(core->getPluginNamespace());
    os << ",\"core_kind\":" << quote(core->getInterfaceInfo().kind)
       << ",\"build_kind\":" << quote(build->getInterfaceInfo().kind)
       << ",\"runtime_kind\":" << quote(runtime->getInterfaceInfo().kind);
    int32_t const nbOut = build->getNbOutputs();
    os << ",\"nb_outputs\":" << nbOut;
    DataType inTypes[3] = {DataType::kFLOAT, DataType::kINT32, DataType::kINT32};
    std::vector<DataType> outTypes(nbOut > 0 ? nbOut : 1, DataType::kBOOL);
    int32_t rc = build->getOutputDataTypes(outTypes.data(), nbOut, inTypes, 3);
    os << ",\"output_types_rc\":" << rc << ",\"output_types\":[";
    for (int32_t o = 0; o < nbOut; ++o)
    {
        os << (o ? "," : "") << quote(typeName(outTypes[o]));
    }
    os << "]";

    // shapes: input 0 of rank inputRank0 with symbolic dims, inputs 1-2 of rank 1
    BuilderImpl impl;
    Builder builder(&impl);
    DimsExprs inputs[3];
    int32_t ranks[3] = {inputRank0, 1, 1};
    for (int32_t i = 0; i < 3; ++i)
    {
        inputs[i].nbDims = ranks[i];
        for (int32_t d = 0; d < ranks[i]; ++d)
        {
            inputs[i].d[d] = impl.symbol();
        }
    }
    std::vector<DimsExprs> outs(nbOut > 0 ? nbOut : 1);
    rc = build->getOutputShapes(inputs, 3, nullptr, 0, outs.data(), nbOut, builder);
    os << ",\"output_shapes_rc\":" << rc << ",\"output_shapes\":[";
    for (int32_t o = 0; rc == 0 && o < nbOut; ++o)
    {
        os << (o ? "," : "") << "[";
        for (int32_t d = 0; d < outs[o].nbDims; ++d)
        {
            // name each output dim by the input dim it is, or its constant value
            std::string what = "?";
            for (int32_t i = 0; i < 3; ++i)
            {
                for (int32_t e = 0; e < inputs[i].nbDims; ++e)
                {
                    if (outs[o].d[d] == inputs[i].d[e])
                    {
                        what = "in" + std::to_string(i) + "." + std::to_string(e);
                    }
                }
            }
            if (what == "?" && outs[o].d[d] != nullptr && outs[o].d[d]->isConstant())
            {
                what = std::to_string(outs[o].d[d]->getConstantValue());
            }
            os << (d ? "," : "") << quote(what);
        }
        os << "]";
    }
    os << "],\"size_tensors\":" << impl.sizeTensors;

    // format combinations: every position, with float32 / int32 / int64 / bool / uint8 / half
    DataType candidates[] = {DataType::kFLOAT, DataType::kINT32, DataType::kINT64, DataType::kBOOL,
        DataType::kUINT8, DataType::kHALF};
    int32_t const nbIo = 3 + nbOut;
    std::vector<DynamicPluginTensorDesc> io;
    for (int32_t p = 0; p < nbIo; ++p)
    {
        io.push_back(desc(p == 0 ? DataType::kFLOAT : DataType::kINT32, p == 0 ? inputRank0 : 1));
    }
    os << ",\"supported\":[";
    for (int32_t p = 0; p < nbIo; ++p)
    {
        os << (p ? "," : "") << "[";
        bool first = true;
        for (DataType t : candidates)
        {
            std::vector<DynamicPluginTensorDesc> trial = io;
            trial[p].desc.type = t;
            if (build->supportsFormatCombination(p, trial.data(), 3, nbOut))
            {
                os << (first ? "" : ",") << quote(typeName(t));
                first = false;
            }
        }
        os << "]";
    }
    os << "]";
    // a non-linear format is refused
    std::vector<DynamicPluginTensorDesc> chw = io;
    chw[0].desc.format = TensorFormat::kCHW32;
    os << ",\"accepts_chw32\":" << (build->supportsFormatCombination(0, chw.data(), 3, nbOut) ? "true" : "false");
    os << ",\"workspace\":" << build->getWorkspaceSize(io.data(), 3, io.data() + 3, nbOut);
    os << ",\"serialized_fields\":" << fields(runtime->getFieldsToSerialize());
    os << "}";
    return os.str();
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: pv_probe LIB.so\n");
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 1;
    }
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    if (setLoggerFinder == nullptr || getCreators == nullptr)
    {
        std::fprintf(stderr, "entry points missing\n");
        return 1;
    }
    static Finder finder;
    setLoggerFinder(&finder);
    int32_t nb = 0;
    IPluginCreatorInterface* const* creators = getCreators(nb);
    std::ostringstream os;
    os << "{\"creators\":[";
    for (int32_t c = 0; c < nb; ++c)
    {
        IPluginCreatorInterface* base = creators[c];
        InterfaceInfo info = base->getInterfaceInfo();
        os << (c ? "," : "") << "{\"kind\":" << quote(info.kind) << ",\"kind_version\":[" << info.major << ","
           << info.minor << "]";
        if (std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            os << "}";
            continue;
        }
        auto* creator = static_cast<IPluginCreatorV3One*>(base);
        os << ",\"name\":" << quote(creator->getPluginName()) << ",\"version\":" << quote(creator->getPluginVersion())
           << ",\"namespace\":" << quote(creator->getPluginNamespace())
           << ",\"fields\":" << fields(creator->getFieldNames());
        bool const isDpc = std::strcmp(creator->getPluginName(), "PvDpcKnn") == 0;
        // createPlugin from fields, as the ONNX parser passes node attributes (k: kINT32)
        int32_t k = 7;
        PluginField kf("k", &k, PluginFieldType::kINT32, 1);
        PluginFieldCollection fc{isDpc ? 1 : 0, isDpc ? &kf : nullptr};
        IPluginV3* plugin = creator->createPlugin("probe", &fc, TensorRTPhase::kBUILD);
        os << ",\"created\":" << (plugin != nullptr ? "true" : "false");
        // an empty field collection: PvDpcKnn must refuse it (k is required)
        PluginFieldCollection none{0, nullptr};
        IPluginV3* bare = creator->createPlugin("probe", &none, TensorRTPhase::kBUILD);
        os << ",\"created_without_fields\":" << (bare != nullptr ? "true" : "false");
        delete bare;
        if (plugin != nullptr)
        {
            os << ",\"plugin\":" << describePlugin(plugin, isDpc ? 3 : 1);
            IPluginV3* copy = plugin->clone();
            os << ",\"clone\":" << (copy != nullptr ? describePlugin(copy, isDpc ? 3 : 1) : "null");
            // round trip: the fields a runtime serializes recreate an equal plugin
            auto* rt = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            IPluginV3* again = creator->createPlugin("probe", rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
            os << ",\"round_trip\":" << (again != nullptr ? describePlugin(again, isDpc ? 3 : 1) : "null");
            delete again;
            delete copy;
            delete plugin;
        }
        os << "}";
    }
    os << "],\"log\":[";
    for (size_t i = 0; i < finder.logger.messages.size(); ++i)
    {
        os << (i ? "," : "") << quote(finder.logger.messages[i]);
    }
    os << "]}";
    std::printf("%s\n", os.str().c_str());
    return 0;
}
