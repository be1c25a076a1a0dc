// What the sample shows a terminal: printable UTF-8 as is, every other byte as \xNN.
#include <gtest/gtest.h>

#include <string>

#include "launch/printable.h"

namespace tessera::launch {
namespace {

TEST(PrintableText, KeepsPrintableAsciiNewlinesAndTabs) {
  EXPECT_EQ(printable_text("ROMEO:\n\tBut soft!"), "ROMEO:\n\tBut soft!");
  EXPECT_EQ(printable_text(""), "");
}

TEST(PrintableText, KeepsWellFormedMultiByteCharacters) {
  const std::string text = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";  // é € 😀 U+10FFFF
  EXPECT_EQ(printable_text(text), text);
}

TEST(PrintableText, EscapesControlCharacters) {
  EXPECT_EQ(printable_text(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(printable_text("\x1b[2J\r\x7f"), "\\x1b[2J\\x0d\\x7f");
  // C1 controls are well-formed UTF-8 but drive terminals (U+009B is CSI).
  EXPECT_EQ(printable_text("\xc2\x9b" "31m"), "\\xc2\\x9b31m");
}

TEST(PrintableText, EscapesEveryByteOfAnIllFormedSequence) {
  EXPECT_EQ(printable_text("\xff\xfe"), "\\xff\\xfe");
  EXPECT_EQ(printable_text("\xc0\xaf"), "\\xc0\\xaf");              // overlong '/'
  EXPECT_EQ(printable_text("\xe0\x80\xaf"), "\\xe0\\x80\\xaf");      // overlong, 3 bytes
  EXPECT_EQ(printable_text("\xed\xa0\x80"), "\\xed\\xa0\\x80");      // a UTF-16 surrogate
  EXPECT_EQ(printable_text("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
  EXPECT_EQ(printable_text("\x80x"), "\\x80x");                      // stray continuation
}

TEST(PrintableText, ResynchronisesAfterATruncatedSequence) {
  // A 3-byte lead with one continuation, then ASCII: both bytes escaped, the ASCII kept.
  EXPECT_EQ(printable_text("\xe2\x82z\xc3\xa9"), "\\xe2\\x82z\xc3\xa9");
  EXPECT_EQ(printable_text("end\xf0\x9f"), "end\\xf0\\x9f");  // cut at the end of the text
}

TEST(PrintableText, OutputIsAlwaysPrintable) {
  // Every pair of bytes: the result holds only printable ASCII, newlines, tabs and whole
  // printable multi-byte characters.
  for (int lead = 0; lead < 256; ++lead) {
    for (int b = 0; b < 256; ++b) {
      const std::string in{static_cast<char>(lead), static_cast<char>(b)};
      const std::string out = printable_text(in);
      for (size_t i = 0; i < out.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(out[i]);
        ASSERT_FALSE(c < 0x20 && c != '\n' && c != '\t') << lead << " " << b;
        ASSERT_NE(c, 0x7f) << lead << " " << b;
      }
      // Re-escaping the output changes nothing: no raw control or broken byte survived.
      ASSERT_EQ(printable_text(out), out) << lead << " " << b;
    }
  }
}

}  // namespace
}  // namespace tessera::launch
