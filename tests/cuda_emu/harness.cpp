// Runs the kernels of a generated CUDA source on the CPU (compiled with attnc_emu.h included).
//
// Usage: <bin> JOB OUT [BANKS]. JOB (written by tests/common/cuda_emu.rs), all little endian:
//   "ATTNCJOB" (8 bytes)
//   u32 kernel_count, then per kernel:
//     u32 name_len, name bytes, u32 grid_x, u32 grid_y, u32 grid_z, u32 threads, u32 smem_bytes
//   i32 n, i32 heads
//   21 buffers in parameter order (q k v beta g proj out s z chunk_s chunk_z work scratch
//   conv_q conv_k conv_v tail_q tail_k tail_v mom_s mom_z), each:
//     u32 write_back (0/1), u64 len, len x f32
// OUT gets, for each buffer with write_back = 1 in that order: u32 index, u64 len, len x f32.
// BANKS, when given, turns on bank-conflict counting and gets one line per (kernel, access site
// of the tile library): "kernel<TAB>op<TAB>line<TAB>instructions<TAB>wavefronts<TAB>worst", where
// an instruction of a warp takes as many wavefronts per phase (32 lanes for 4-byte accesses, 16
// for 8, 8 for 16) as the most distinct 4-byte words it touches in one of the 32 banks, and
// worst is the most any instruction took in one phase (1: conflict-free; a broadcast is free).
// Any error: a message on stderr and exit status 2.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Kernel = void (*)(const float*, const float*, const float*, const float*, const float*,
                        const float*, float*, float*, float*, float*, float*, float*, float*,
                        const float*, const float*, const float*, float*, float*, float*, float*,
                        float*, int, int);

constexpr int kBuffers = 21;
const char* const kBufferNames[kBuffers] = {
    "q",       "k",    "v",       "beta",   "g",      "proj",   "out",
    "s",       "z",    "chunk_s", "chunk_z", "work",  "scratch", "conv_q",
    "conv_k",  "conv_v", "tail_q", "tail_k", "tail_v", "mom_s", "mom_z"};
// Limits of a real launch (sm_90), checked so a launch the GPU would refuse fails here too.
constexpr uint32_t kMaxThreads = 1024;
constexpr uint32_t kMaxGridYZ = 65535;
constexpr uint32_t kMaxSmemBytes = 232448;
constexpr size_t kSmemFloats = attnc_dyn_smem_bytes / sizeof(float);
static_assert(kMaxSmemBytes <= attnc_dyn_smem_bytes);
// A NaN with a recognisable payload: fills dynamic shared memory and the guard zones around
// every buffer, so writes out of bounds can be detected and reads out of bounds give NaN.
constexpr uint32_t kSentinel = 0x7fc0deadu;
constexpr size_t kGuard = 256;  // floats on each side of a buffer

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "attnc-emu: %s\n", msg.c_str());
  std::exit(2);
}

void fill_sentinel(float* p, size_t len) {
  for (size_t i = 0; i < len; ++i) std::memcpy(p + i, &kSentinel, 4);
}

bool is_sentinel(const float* p, size_t len) {
  for (size_t i = 0; i < len; ++i)
    if (std::memcmp(p + i, &kSentinel, 4) != 0) return false;
  return true;
}

struct Reader {
  FILE* f;
  void bytes(void* dst, size_t len) {
    if (std::fread(dst, 1, len, f) != len) fail("job file is truncated");
  }
  template <class T>
  T get() {
    T x;
    bytes(&x, sizeof x);
    return x;
  }
};

struct Launch {
  std::string name;
  Kernel fn;
  uint32_t grid[3];
  uint32_t threads;
  uint32_t smem_bytes;
};

// A buffer with guard zones: data() is what the kernel sees.
struct Buffer {
  std::vector<float> mem;
  size_t len = 0;
  bool write_back = false;
  float* data() { return mem.data() + kGuard; }
};

// Blocks that run at once, each on its own team of threads with its own barriers and shared
// memory, as an SM runs several resident blocks: their steps interleave, so a kernel whose blocks
// race on global memory can fail here.
constexpr uint32_t kTeams = 2;

// The launch now running (set before the teams start; `next` hands out blocks).
struct Running {
  const Launch* k = nullptr;
  float* args[kBuffers] = {};
  int n = 0, heads = 0;
  uint64_t total = 0;           // blocks
  std::vector<uint64_t> order;  // the blocks in the order they are handed out
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
} run;

struct Team;

// Runs once per barrier phase of a team. Workers arrive at the barrier either inside the kernel
// (__syncthreads) or after returning from it (counted in `returned`): all returned means the
// block is over, so take the next one; some returned means __syncthreads was reached by only
// some threads, which is undefined on a GPU and would deadlock here, so stop with an error.
struct OnPhase {
  Team* team;
  void operator()() noexcept;
};

// One recorded shared-memory access (bank-conflict counting).
struct Access {
  const char* op;
  int line;
  uint32_t word;   // 4-byte word offset in the block's shared memory
  uint32_t bytes;  // 4, 8 or 16; 0 for a lane predicated off
};

// Per (kernel, op, line): warp instructions, their wavefronts, the worst phase.
struct SiteStats {
  uint64_t instructions = 0, wavefronts = 0;
  uint32_t worst = 0;
};
std::mutex stats_mutex;
std::map<std::tuple<std::string, std::string, int>, SiteStats> bank_stats;

// mma.sync's exchange area for one warp.
struct WarpTiles {
  float a[16][8], b[8][8], c[16][8];
};

struct Team {
  std::unique_ptr<std::barrier<OnPhase>> barrier;
  // One barrier per warp (the last warp may be partial), for the warp-wide operations.
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  WarpTiles warp_tiles[kMaxThreads / 32];
  alignas(16) float smem[kSmemFloats];
  attnc_dim3 block{};  // the block the team runs now; only OnPhase writes it
  bool started = false, done = false;
  std::atomic<uint32_t> returned{0};  // workers that left the kernel in this block
  std::vector<Access> log[kMaxThreads];  // per thread, this block (bank-conflict counting)
};

thread_local Team* my_team;

// Wavefronts of one phase: the most distinct words in one bank (lanes reading the same word
// share it).
uint32_t phase_wavefronts(const std::vector<const Access*>& phase) {
  std::vector<uint32_t> words[32];
  for (const Access* a : phase)
    for (uint32_t w = a->word; w < a->word + a->bytes / 4; ++w) {
      auto& bank = words[w % 32];
      if (std::find(bank.begin(), bank.end(), w) == bank.end()) bank.push_back(w);
    }
  size_t most = 0;
  for (auto& bank : words) most = std::max(most, bank.size());
  return uint32_t(most);
}

// Turns the block's access records into warp instructions and adds them to bank_stats.
void count_banks(Team& tm, const std::string& kernel, uint32_t threads) {
  std::map<std::tuple<std::string, std::string, int>, SiteStats> block;
  for (uint32_t w0 = 0; w0 < threads; w0 += 32) {
    const uint32_t lanes = std::min(32u, threads - w0);
    // Per site, per lane: that lane's accesses there, in order.
    std::map<std::pair<const char*, int>, std::vector<std::vector<const Access*>>> sites;
    for (uint32_t l = 0; l < lanes; ++l)
      for (const Access& a : tm.log[w0 + l]) {
        auto& per_lane = sites[{a.op, a.line}];
        per_lane.resize(lanes);
        per_lane[l].push_back(&a);
      }
    for (auto& [site, per_lane] : sites) {
      size_t depth = 0;
      for (auto& v : per_lane) depth = std::max(depth, v.size());
      SiteStats& st = block[{kernel, site.first, site.second}];
      for (size_t k = 0; k < depth; ++k) {
        std::vector<const Access*> phase;
        uint32_t per_phase = 32;
        for (uint32_t l = 0; l < lanes; ++l) {
          if (l % per_phase == 0 && !phase.empty()) {
            const uint32_t w = phase_wavefronts(phase);
            st.wavefronts += w;
            st.worst = std::max(st.worst, w);
            phase.clear();
          }
          if (k < per_lane[l].size() && per_lane[l][k]->bytes > 0) {
            phase.push_back(per_lane[l][k]);
            per_phase = 128 / per_lane[l][k]->bytes;
          }
        }
        if (!phase.empty()) {
          const uint32_t w = phase_wavefronts(phase);
          st.wavefronts += w;
          st.worst = std::max(st.worst, w);
        }
        ++st.instructions;
      }
    }
  }
  for (uint32_t t = 0; t < threads; ++t) tm.log[t].clear();
  std::lock_guard<std::mutex> lock(stats_mutex);
  for (auto& [key, st] : block) {
    SiteStats& all = bank_stats[key];
    all.instructions += st.instructions;
    all.wavefronts += st.wavefronts;
    all.worst = std::max(all.worst, st.worst);
  }
}

void OnPhase::operator()() noexcept {
  Team& tm = *team;
  if (tm.done) return;
  const Launch& k = *run.k;
  uint32_t returned = tm.returned.load();
  if (returned == 0) return;  // an ordinary __syncthreads()
  const char* error = nullptr;
  size_t used = (k.smem_bytes + 3) / 4;
  if (returned != k.threads)
    error = "__syncthreads() reached by only some of the block's threads";
  else if (tm.started && !is_sentinel(tm.smem + used, kSmemFloats - used))
    error = "wrote dynamic shared memory beyond its smem_bytes";
  if (error) {
    std::fprintf(stderr, "attnc-emu: kernel %s, block (%u, %u, %u): %s\n", k.name.c_str(),
                 tm.block.x, tm.block.y, tm.block.z, error);
    run.failed = true;
    tm.done = true;
    return;
  }
  if (attnc_count_banks && tm.started) count_banks(tm, k.name, k.threads);
  uint64_t i = run.next.fetch_add(1);
  if (run.failed || i >= run.total) {
    tm.done = true;
    return;
  }
  uint64_t b = run.order[i];
  tm.block = {uint32_t(b % k.grid[0]), uint32_t(b / k.grid[0] % k.grid[1]),
              uint32_t(b / k.grid[0] / k.grid[1])};
  tm.started = true;
  fill_sentinel(tm.smem, kSmemFloats);
  tm.returned.store(0);
}

void worker(Team* tm, uint32_t t) {
  my_team = tm;
  threadIdx = {t, 0, 0};
  attnc_dyn_smem_ptr = tm->smem;
  for (;;) {
    tm->returned.fetch_add(1);
    tm->barrier->arrive_and_wait();
    if (tm->done) break;
    blockIdx = tm->block;
    run.k->fn(run.args[0], run.args[1], run.args[2], run.args[3], run.args[4], run.args[5],
              run.args[6], run.args[7], run.args[8], run.args[9], run.args[10], run.args[11],
              run.args[12], run.args[13], run.args[14], run.args[15], run.args[16], run.args[17],
              run.args[18], run.args[19], run.args[20], run.n, run.heads);
  }
  // Leaving for good: threads still inside the kernel (after an error) must not wait for us.
  tm->barrier->arrive_and_drop();
}

// Every block of the grid, shuffled, on kTeams teams of `threads` workers each.
void launch(const Launch& k, Buffer* buffers, int n, int heads) {
  run.k = &k;
  for (int i = 0; i < kBuffers; ++i) run.args[i] = buffers[i].data();
  run.n = n;
  run.heads = heads;
  run.next = 0;
  run.failed = false;
  run.total = uint64_t(k.grid[0]) * k.grid[1] * k.grid[2];
  // A GPU promises no order between the blocks of a launch: hand them out shuffled (a fixed
  // seed), so a kernel that relies on block 0 running first fails here too.
  run.order.resize(run.total);
  std::iota(run.order.begin(), run.order.end(), uint64_t{0});
  std::shuffle(run.order.begin(), run.order.end(), std::mt19937_64(0x5eed + run.total));
  blockDim = {k.threads, 1, 1};
  gridDim = {k.grid[0], k.grid[1], k.grid[2]};
  std::vector<std::unique_ptr<Team>> teams;
  for (uint64_t i = 0; i < std::min<uint64_t>(kTeams, run.total); ++i) {
    auto tm = std::make_unique<Team>();
    tm->barrier = std::make_unique<std::barrier<OnPhase>>(k.threads, OnPhase{tm.get()});
    for (uint32_t w = 0; w * 32 < k.threads; ++w)
      tm->warp_barriers.push_back(
          std::make_unique<std::barrier<>>(std::min(32u, k.threads - 32 * w)));
    teams.push_back(std::move(tm));
  }
  std::vector<std::thread> pool;
  for (auto& tm : teams)
    for (uint32_t t = 0; t < k.threads; ++t) pool.emplace_back(worker, tm.get(), t);
  for (auto& th : pool) th.join();
  if (run.failed) std::exit(2);
  for (int i = 0; i < kBuffers; ++i) {
    Buffer& b = buffers[i];
    if (!is_sentinel(b.mem.data(), kGuard) || !is_sentinel(b.data() + b.len, kGuard))
      fail("kernel " + k.name + " wrote outside `" + kBufferNames[i] + "` (" +
           std::to_string(b.len) + " floats)");
  }
}

}  // namespace

void __syncthreads() { my_team->barrier->arrive_and_wait(); }

void attnc_record_access(const void* p, unsigned bytes, const char* op, int line) {
  Team* tm = my_team;
  const char* base = reinterpret_cast<const char*>(tm->smem);
  const char* at = static_cast<const char*>(p);
  if (at < base || at >= base + sizeof tm->smem) return;  // a tile in global scratch
  tm->log[threadIdx.x].push_back({op, line, uint32_t((at - base) / 4), bytes});
}

void attnc_mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
  const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  if ((w + 1) * 32 > blockDim.x) fail("mma.sync in a partial warp (threads not a multiple of 32)");
  WarpTiles& m = my_team->warp_tiles[w];
  for (unsigned i = 0; i < 4; ++i) m.a[g + 8 * (i & 1)][t + 4 * (i >> 1)] = a[i];
  for (unsigned i = 0; i < 2; ++i) m.b[t + 4 * i][g] = b[i];
  for (unsigned i = 0; i < 4; ++i) m.c[g + 8 * (i >> 1)][2 * t + (i & 1)] = d[i];
  my_team->warp_barriers[w]->arrive_and_wait();
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned r = g + 8 * (i >> 1), c = 2 * t + (i & 1);
    float s = 0.0f;
    for (unsigned k = 0; k < 8; ++k) s = std::fma(m.a[r][k], m.b[k][c], s);
    d[i] = m.c[r][c] + s;
  }
  // Nobody posts the next tile until every lane has read this one.
  my_team->warp_barriers[w]->arrive_and_wait();
}

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) fail("usage: harness JOB OUT [BANKS]");
  attnc_count_banks = argc == 4;
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) fail(std::string("cannot open job file ") + argv[1]);
  Reader r{f};
  char magic[8];
  r.bytes(magic, 8);
  if (std::memcmp(magic, "ATTNCJOB", 8) != 0) fail("not a job file (bad magic)");

  std::vector<Launch> kernels(r.get<uint32_t>());
  for (Launch& k : kernels) {
    k.name.resize(r.get<uint32_t>());
    r.bytes(k.name.data(), k.name.size());
    for (uint32_t& g : k.grid) g = r.get<uint32_t>();
    k.threads = r.get<uint32_t>();
    k.smem_bytes = r.get<uint32_t>();
    k.fn = reinterpret_cast<Kernel>(dlsym(RTLD_DEFAULT, k.name.c_str()));
    if (!k.fn) fail("no kernel named " + k.name + " in the source");
    if (k.threads == 0 || k.threads > kMaxThreads)
      fail(k.name + ": " + std::to_string(k.threads) + " threads per block (1..=1024)");
    if (k.grid[1] > kMaxGridYZ || k.grid[2] > kMaxGridYZ)
      fail(k.name + ": grid y or z above 65535");
    if (k.smem_bytes > kMaxSmemBytes)
      fail(k.name + ": " + std::to_string(k.smem_bytes) + " bytes of dynamic shared memory (max " +
           std::to_string(kMaxSmemBytes) + ")");
  }
  int n = r.get<int32_t>();
  int heads = r.get<int32_t>();
  Buffer buffers[kBuffers];
  for (Buffer& b : buffers) {
    b.write_back = r.get<uint32_t>() != 0;
    b.len = r.get<uint64_t>();
    b.mem.resize(b.len + 2 * kGuard);
    fill_sentinel(b.mem.data(), kGuard);
    fill_sentinel(b.data() + b.len, kGuard);
    r.bytes(b.data(), b.len * 4);
  }
  if (std::fgetc(f) != EOF) fail("job file has trailing bytes");
  std::fclose(f);

  for (const Launch& k : kernels) launch(k, buffers, n, heads);

  FILE* o = std::fopen(argv[2], "wb");
  if (!o) fail(std::string("cannot create ") + argv[2]);
  for (uint32_t i = 0; i < kBuffers; ++i) {
    Buffer& b = buffers[i];
    if (!b.write_back) continue;
    uint64_t len = b.len;
    std::fwrite(&i, 4, 1, o);
    std::fwrite(&len, 8, 1, o);
    std::fwrite(b.data(), 4, b.len, o);
  }
  if (std::fclose(o) != 0) fail(std::string("cannot write ") + argv[2]);
  if (attnc_count_banks) {
    FILE* b = std::fopen(argv[3], "w");
    if (!b) fail(std::string("cannot create ") + argv[3]);
    for (auto& [key, st] : bank_stats)
      std::fprintf(b, "%s\t%s\t%d\t%llu\t%llu\t%u\n", std::get<0>(key).c_str(),
                   std::get<1>(key).c_str(), std::get<2>(key),
                   (unsigned long long)st.instructions, (unsigned long long)st.wavefronts,
                   st.worst);
    if (std::fclose(b) != 0) fail(std::string("cannot write ") + argv[3]);
  }
  return 0;
}
