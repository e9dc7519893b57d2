// engine: what an inference engine does with npkio.
//
//   engine LAYER SHARD.safetensors [SHARD.safetensors]...
//
// Maps every shard of a checkpoint, builds a name -> span table over the mapped bytes
// (no tensor byte is copied), then reads one layer: its dtype, shape, and the sum of its
// elements decoded to float. Handles are owned by RAII wrappers (std::unique_ptr with
// npkio's free function as deleter), so they are freed on every path, exceptions included;
// spans stay valid as long as the shards that own them.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
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
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
