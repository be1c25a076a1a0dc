// Text for a terminal: a byte-level model can emit any byte, and raw control codes or
// broken UTF-8 written to a terminal garble it (or drive it: escape sequences). Printable
// UTF-8 passes through; everything else is shown as \xNN, one escape per byte.
#pragma once

#include <string>
#include <string_view>

namespace tessera::launch {

// Keeps well-formed UTF-8 of printable characters, newlines and tabs; escapes C0/C1 control
// characters, DEL and every byte of an ill-formed sequence (overlong forms, surrogates,
// code points past U+10FFFF, truncated sequences) as \xNN.
std::string printable_text(std::string_view bytes);

}  // namespace tessera::launch
