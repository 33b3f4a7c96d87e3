// Run-time switches read from the environment.
#pragma once

#include <cstdlib>
#include <cstring>

namespace omnifast {

// A switch that is on unless the variable is set to "0". Read on every call: callers keep the
// result in a function-local static so that it is read once per process.
inline bool env_switch_on(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::strcmp(env, "0") != 0;
}

}  // namespace omnifast
