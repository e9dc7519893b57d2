// engine: what an inference engine does with npkio.
//
//   engine LAYER SHARD.safetensors [SHARD.safetensors]...
//
// Maps every shard of a checkpoint, builds a name -> span table over the mapped bytes
// (no tensor byte is copied), then reads one layer: its dtype, shape, and the sum of its
// elements decoded to float. Handles are owned by RAII wrappers (std::unique_ptr with
// npkio's free function as deleter), so they are freed on every path, exceptions included;
// spans stay valid as long as the shards that own them.
//
// Then it loads the layer the way an engine that cannot hand npkio a pointer does (a GPU
// engine copying to device memory): through a sink, rank 0 of 2 along dimension 0, with
// staging buffers the engine owns (pinned memory in a real engine; npkio never links
// CUDA). The sink copies each chunk to the "device" (a vector here) at its offset; the
// result must equal the first half of the mapped layer's rows.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "npkio.h"

namespace {

// An npkio failure as an exception: the status and the thread's last error message.
class NpkioError : public std::runtime_error {
  public:
    NpkioError(NpkioStatus status, const std::string &what)
        : std::runtime_error(name(status) + ": " + npkio_last_error_message() + ": " + what),
          status_(status) {}
    NpkioStatus status() const { return status_; }

  private:
    static std::string name(NpkioStatus s) {
        const char *n = npkio_status_name(s);
        return n ? n : "?";
    }
    NpkioStatus status_;
};

void check(NpkioStatus s, const char *what) {
    if (s != NPKIO_STATUS_OK) {
        throw NpkioError(s, what);
    }
}

struct SafetensorsDeleter {
    void operator()(NpkioSafetensors *h) const { npkio_safetensors_free(h); }
};
using Safetensors = std::unique_ptr<NpkioSafetensors, SafetensorsDeleter>;

Safetensors open_safetensors(const std::string &path) {
    NpkioSafetensors *raw = nullptr;
    check(npkio_safetensors_open(path.c_str(), &raw), path.c_str());
    return Safetensors(raw);
}

// A tensor's bytes in a mapped shard: valid while the shard's handle lives.
struct Span {
    NpkioDtype dtype;
    std::vector<uint64_t> shape;
    const uint8_t *data;
    size_t nbytes;
};

class Checkpoint {
  public:
    explicit Checkpoint(const std::vector<std::string> &shards) {
        for (const auto &path : shards) {
            shards_.push_back(open_safetensors(path));
            NpkioSafetensors *st = shards_.back().get();
            size_t count = 0;
            check(npkio_safetensors_count(st, &count), "count");
            for (size_t i = 0; i < count; ++i) {
                NpkioTensorView v;
                check(npkio_safetensors_get(st, i, &v), "get");
                Span span{v.dtype, std::vector<uint64_t>(v.shape, v.shape + v.ndim), v.data,
                          v.nbytes};
                if (!table_.emplace(std::string(v.name, v.name_len), span).second) {
                    throw std::runtime_error("tensor in two shards: " +
                                             std::string(v.name, v.name_len));
                }
            }
        }
    }

    const Span &at(const std::string &name) const {
        auto it = table_.find(name);
        if (it == table_.end()) {
            throw std::runtime_error("no tensor " + name + " in the checkpoint");
        }
        return it->second;
    }

    size_t size() const { return table_.size(); }

  private:
    std::vector<Safetensors> shards_;  // owns the mappings the spans point into
    std::unordered_map<std::string, Span> table_;
};

float decode(NpkioDtype dtype, const uint8_t *p) {
    switch (dtype) {
    case NPKIO_DTYPE_F32: {
        float f;
        std::memcpy(&f, p, 4);
        return f;
    }
    case NPKIO_DTYPE_BF16: {
        // bfloat16 is the top half of an IEEE single (little-endian bytes).
        uint32_t bits = static_cast<uint32_t>(p[0]) << 16 | static_cast<uint32_t>(p[1]) << 24;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    }
    default:
        throw std::runtime_error(std::string("this engine does not run ") +
                                 npkio_dtype_name(dtype) + " layers");
    }
}

struct LoaderDeleter {
    void operator()(NpkioLoader *h) const { npkio_load_free(h); }
};
using Loader = std::unique_ptr<NpkioLoader, LoaderDeleter>;

// The "device": where the sink puts each chunk, from npkio's worker threads.
struct Device {
    std::vector<uint8_t> memory;
    size_t calls = 0;
    std::mutex lock;
};

int32_t to_device(void *user, size_t request, uint64_t offset, const uint8_t *data, size_t len) {
    auto *dev = static_cast<Device *>(user);
    if (request != 0 || offset > dev->memory.size() || len > dev->memory.size() - offset) {
        return 1;  // stops the load with an error
    }
    std::lock_guard<std::mutex> guard(dev->lock);
    std::memcpy(dev->memory.data() + offset, data, len);  // cudaMemcpyAsync in an engine
    ++dev->calls;
    return 0;
}

// Loads rank 0's half (dimension 0) of `layer` from the checkpoint `dir` through a sink.
void load_rank0_through_sink(const std::string &dir, const std::string &layer, Device &dev) {
    NpkioLoader *raw = nullptr;
    check(npkio_load_open(dir.c_str(), &raw), dir.c_str());
    Loader loader(raw);
    NpkioLoadRequest req{};
    req.name = layer.c_str();
    req.slice = NPKIO_LOAD_SHARD;
    req.dim = 0;
    req.start = 0;  // rank
    req.end = 2;    // world
    req.dtype = NPKIO_LOAD_AS_STORED;
    size_t nbytes = 0;
    check(npkio_load_output_size(loader.get(), &req, &nbytes), "output size");
    dev.memory.assign(nbytes, 0);
    NpkioLoadOptions opts;
    check(npkio_load_options_init(&opts, sizeof opts), "options");
    // Two engine-owned staging buffers (pinned in a real engine): at most two workers.
    const size_t staging = 4096;
    std::vector<std::vector<uint8_t>> pinned(2, std::vector<uint8_t>(staging));
    uint8_t *buffers[2] = {pinned[0].data(), pinned[1].data()};
    NpkioLoadReport report;
    check(npkio_load_run_sink(loader.get(), &req, 1, &opts, staging, buffers, 2, to_device,
                              &dev, &report),
          "load through the sink");
    if (report.bytes_out != nbytes) {
        throw std::runtime_error("the sink did not receive every byte");
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s LAYER SHARD.safetensors...\n", argv[0]);
        return 2;
    }
    try {
        Checkpoint ckpt(std::vector<std::string>(argv + 2, argv + argc));
        const Span &layer = ckpt.at(argv[1]);
        size_t width = npkio_dtype_bits(layer.dtype) / 8;
        double sum = 0;
        for (size_t off = 0; width && off + width <= layer.nbytes; off += width) {
            sum += decode(layer.dtype, layer.data + off);
        }
        std::printf("%zu tensors mapped\n%s %s [", ckpt.size(), argv[1],
                    npkio_dtype_name(layer.dtype));
        for (size_t i = 0; i < layer.shape.size(); ++i) {
            std::printf(i ? ", %llu" : "%llu", static_cast<unsigned long long>(layer.shape[i]));
        }
        std::printf("] sum %.9g\n", sum);

        // The same layer, rank 0 of 2, through a sink into "device" memory.
        std::string first(argv[2]);
        size_t slash = first.find_last_of('/');
        std::string dir = slash == std::string::npos ? "." : first.substr(0, slash);
        Device dev;
        load_rank0_through_sink(dir, argv[1], dev);
        size_t half = layer.shape.empty() ? 0 : (layer.shape[0] + 1) / 2;
        size_t row = layer.shape.empty() || layer.shape[0] == 0 ? 0 : layer.nbytes / layer.shape[0];
        bool same = dev.memory.size() == half * row &&
                    std::memcmp(dev.memory.data(), layer.data, dev.memory.size()) == 0;
        std::printf("rank 0 of 2 through a sink: %zu bytes, %s the mapped rows\n",
                    dev.memory.size(), same ? "equal to" : "DIFFERENT FROM");
        if (!same) {
            return 1;
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
