// Each op folder defines one `omnifast::bind_<op>(m)` that adds its functions to omnifast._C.
// bindings.cpp calls them in turn; adding an op means adding its line there.
#pragma once

#include <torch/extension.h>

namespace omnifast {
void bind_composite(pybind11::module_& m);
void bind_bijection(pybind11::module_& m);
void bind_gabor(pybind11::module_& m);
void bind_runtime(pybind11::module_& m);
}  // namespace omnifast
