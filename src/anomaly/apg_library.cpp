// The built-in APG library (METHOD §2): abnormal attributes we wrote for the 15 MVTec AD and the
// 12 VisA classes, used when no LLM-made prompts file is given. Each sentence describes how the
// defect looks (shape, colour, texture), which is what the text tower can match.
#include <array>
#include <string_view>

#include "anomaly/apg.h"

namespace iadgpt::anomaly {
namespace {

struct Entry {
  std::string_view keyword, sentence;
};
struct ClassEntries {
  std::string_view name;
  std::vector<Entry> entries;
};

const std::vector<ClassEntries>& library() {
  static const std::vector<ClassEntries> table = {
      // ---- MVTec AD ----
      {"bottle",
       {{"broken rim", "the bottle rim has a chipped or broken edge with a missing piece of glass"},
        {"crack", "a thin dark crack runs across the glass bottom of the bottle"},
        {"contamination", "dirt or a foreign particle sits on the bottom of the bottle"},
        {"scratch", "a bright scratch line marks the surface of the bottle"},
        {"stain", "a discoloured stain or residue spoils the inside of the bottle"},
        {"deformation", "the round opening of the bottle is dented or out of shape"}}},
      {"cable",
       {{"bent wire", "a wire strand sticks out bent from the cable cross-section"},
        {"cable swap", "two inner cables have swapped their colours in the cross-section"},
        {"cut insulation", "the coloured insulation of an inner cable is cut open"},
        {"missing cable", "one of the three inner cables is missing from the cross-section"},
        {"missing wire", "the copper strands are missing from an inner cable"},
        {"poke insulation", "the insulation is poked through and the copper shows"},
        {"combined", "several defects at once leave the cable cross-section damaged"}}},
      {"capsule",
       {{"crack", "a crack splits the shell of the capsule"},
        {"faulty imprint", "the black printed text on the capsule is smeared or incomplete"},
        {"poke", "a small hole is poked into the capsule shell"},
        {"scratch", "a scratch line runs along the smooth capsule surface"},
        {"squeeze", "the capsule is squeezed and bent out of its oval shape"},
        {"contamination", "a dark spot of dirt sits on the capsule"}}},
      {"carpet",
       {{"color stain", "a patch of the carpet has a different colour from the woven pattern"},
        {"cut", "a cut in the carpet leaves a line of severed threads"},
        {"hole", "a hole in the carpet shows missing fibres"},
        {"metal contamination", "a shiny metal fragment lies in the carpet fibres"},
        {"thread", "a loose thread lies across the carpet surface"},
        {"stain", "a dark dirty stain spoils the regular carpet texture"}}},
      {"grid",
       {{"bent", "the metal grid wires are bent out of their regular pattern"},
        {"broken", "a wire of the grid is broken and leaves a gap"},
        {"glue", "a blob of glue covers part of the grid"},
        {"metal contamination", "a metal fragment lies on the grid"},
        {"thread", "a thread is caught in the grid"},
        {"irregular pattern", "the repeating grid pattern is disturbed in one place"}}},
      {"hazelnut",
       {{"crack", "the brown shell of the hazelnut has a crack"},
        {"cut", "a cut opens the shell of the hazelnut"},
        {"hole", "a small hole is bored into the hazelnut shell"},
        {"print", "a printed mark or letters appear on the hazelnut shell"},
        {"stain", "a dark stain discolours the hazelnut"},
        {"broken", "a piece of the hazelnut is broken off"}}},
      {"leather",
       {{"color", "a spot of the leather has a different colour"},
        {"cut", "a cut runs through the leather surface"},
        {"fold", "the leather is folded and creased"},
        {"glue", "a glossy glue spot sits on the leather"},
        {"poke", "a small hole is poked into the leather"},
        {"scratch", "a scratch mark spoils the grain of the leather"}}},
      {"metal_nut",
       {{"bent", "a lobe of the metal nut is bent out of shape"},
        {"color", "a coloured paint spot sits on the metal nut"},
        {"flip", "the metal nut is flipped upside down"},
        {"scratch", "a scratch mark runs across the metal nut surface"},
        {"missing part", "a part of the metal nut is missing"},
        {"dent", "a dent deforms the surface of the metal nut"}}},
      {"pill",
       {{"color", "a coloured spot or speck differs from the pill's usual specks"},
        {"contamination", "a foreign particle sticks to the pill"},
        {"crack", "a crack runs across the white pill"},
        {"faulty imprint", "the imprint on the pill is missing or blurred"},
        {"pill type", "the pill is of a different type with other colours"},
        {"scratch", "a scratch marks the surface of the pill"},
        {"chip", "a piece of the pill edge is chipped off"}}},
      {"screw",
       {{"manipulated front", "the tip of the screw is damaged or cut off"},
        {"scratch head", "the head of the screw is scratched"},
        {"scratch neck", "the neck of the screw below the head is scratched"},
        {"thread side", "the thread on the side of the screw is damaged"},
        {"thread top", "the top of the screw thread is damaged"},
        {"bent", "the screw shaft is bent"}}},
      {"tile",
       {{"crack", "a crack splits the ceramic tile"},
        {"glue strip", "a strip of glue lies across the tile"},
        {"gray stroke", "a gray stroke marks the tile surface"},
        {"oil", "an oily dark patch spoils the tile"},
        {"rough", "a rough patch breaks the tile's regular texture"},
        {"chip", "a corner or edge of the tile is chipped"}}},
      {"toothbrush",
       {{"defective bristles", "some bristles of the toothbrush are bent, missing or splayed"},
        {"contamination", "a foreign fibre or particle is stuck in the bristles"},
        {"missing tuft", "a tuft of bristles is missing from the toothbrush head"},
        {"discoloured bristles", "some bristles have the wrong colour"},
        {"uneven bristles", "the bristles have uneven lengths"}}},
      {"transistor",
       {{"bent lead", "a metal lead of the transistor is bent"},
        {"cut lead", "a lead of the transistor is cut short"},
        {"damaged case", "the black case of the transistor is damaged"},
        {"misplaced", "the transistor is misplaced or missing from its position"},
        {"rotated", "the transistor is rotated on the board"},
        {"burn", "a burn mark discolours the transistor"}}},
      {"wood",
       {{"color", "a patch of the wood has an unusual colour"},
        {"hole", "a hole is drilled or knocked into the wood"},
        {"liquid", "a liquid stain soaks into the wood grain"},
        {"scratch", "a scratch runs across the wood grain"},
        {"combined", "several defects together damage the wood surface"},
        {"crack", "a crack splits the wood along the grain"}}},
      {"zipper",
       {{"broken teeth", "some zipper teeth are broken or missing"},
        {"fabric border", "the fabric border of the zipper is damaged"},
        {"fabric interior", "the fabric between the teeth is damaged"},
        {"rough", "the zipper surface is rough and frayed"},
        {"split teeth", "the zipper teeth are split apart"},
        {"squeezed teeth", "the zipper teeth are squeezed together"}}},
      // ---- VisA ----
      {"candle",
       {{"chunk of wax missing", "a chunk of wax is missing from the candle"},
        {"damaged corner", "a corner of the candle is damaged"},
        {"different colour spot", "a spot of a different colour sits on the candle wax"},
        {"extra wax", "extra wax drips on the candle"},
        {"foreign particle", "a foreign particle is stuck in the wax"},
        {"weird wick", "the wick of the candle is missing or malformed"},
        {"wax melded out", "wax has melted out of the candle's cup"}}},
      {"capsules",
       {{"bubble", "an air bubble is trapped inside a capsule"},
        {"discolor", "a capsule has an unusual colour"},
        {"scratch", "a scratch marks a capsule's surface"},
        {"leak", "a capsule is leaking its content"},
        {"misshape", "a capsule is misshapen"},
        {"missing", "a capsule is missing from the group"}}},
      {"cashew",
       {{"breakage", "the cashew is broken"},
        {"burnt", "the cashew is burnt and dark"},
        {"corner missing", "a corner of the cashew is missing"},
        {"different colour spot", "a spot of a different colour sits on the cashew"},
        {"middle breakage", "the cashew is broken through the middle"},
        {"small holes", "small holes pit the surface of the cashew"},
        {"stuck together", "two cashews are stuck together"}}},
      {"chewinggum",
       {{"chunk of gum missing", "a chunk is missing from the chewing gum"},
        {"corner missing", "a corner of the chewing gum is missing"},
        {"scratches", "scratches mark the chewing gum surface"},
        {"similar colour spot", "a spot of a slightly different colour sits on the gum"},
        {"small cracks", "small cracks run through the chewing gum"}}},
      {"fryum",
       {{"burnt", "the fryum is burnt and dark"},
        {"colour spot", "a spot of a different colour sits on the fryum"},
        {"corner missing", "a corner of the fryum is missing"},
        {"fryum stuck together", "two fryums are stuck together"},
        {"middle breakage", "the fryum is broken through the middle"},
        {"small scratches", "small scratches mark the fryum"},
        {"similar colour spot", "a spot of a similar colour shows on the fryum"}}},
      {"macaroni1",
       {{"chip around edge", "the edge of the macaroni is chipped"},
        {"different colour spot", "a spot of a different colour sits on the macaroni"},
        {"middle breakage", "the macaroni is broken through the middle"},
        {"small chip around edge", "a small chip breaks the macaroni edge"},
        {"small scratches", "small scratches mark the macaroni"},
        {"crack", "a crack runs through the macaroni"}}},
      {"macaroni2",
       {{"breakage down the middle", "the macaroni is broken down the middle"},
        {"color spot similar to the object", "a spot of similar colour shows on the macaroni"},
        {"different color spot", "a spot of a different colour sits on the macaroni"},
        {"small chip around edge", "a small chip breaks the macaroni edge"},
        {"small scratches", "small scratches mark the macaroni surface"},
        {"squeezed", "the macaroni is squeezed out of shape"},
        {"crack", "a crack runs through the macaroni"}}},
      {"pcb1",
       {{"bent", "a pin or component on the circuit board is bent"},
        {"melt", "a component on the circuit board has melted"},
        {"missing", "a component is missing from the circuit board"},
        {"scratch", "a scratch marks the circuit board"},
        {"burnt", "a burnt dark spot shows on the circuit board"},
        {"misalignment", "a component is misaligned on the circuit board"}}},
      {"pcb2",
       {{"bent", "a pin or component on the circuit board is bent"},
        {"melt", "a component on the circuit board has melted"},
        {"missing", "a component is missing from the circuit board"},
        {"scratch", "a scratch marks the circuit board"},
        {"solder bridge", "a blob of solder bridges two pads of the circuit board"},
        {"burnt", "a burnt dark spot shows on the circuit board"}}},
      {"pcb3",
       {{"bent", "a pin or component on the circuit board is bent"},
        {"melt", "a component on the circuit board has melted"},
        {"missing", "a component is missing from the circuit board"},
        {"scratch", "a scratch marks the circuit board"},
        {"dirt", "dirt sits on the circuit board"},
        {"burnt", "a burnt dark spot shows on the circuit board"}}},
      {"pcb4",
       {{"burnt", "a burnt dark spot shows on the circuit board"},
        {"damage", "the circuit board or a component is physically damaged"},
        {"dirt", "dirt sits on the circuit board"},
        {"extra", "an extra object lies on the circuit board"},
        {"missing", "a component is missing from the circuit board"},
        {"scratch", "a scratch marks the circuit board"},
        {"wrong place", "a component sits in the wrong place"}}},
      {"pipe_fryum",
       {{"burnt", "the pipe fryum is burnt and dark"},
        {"corner and edge breakage", "a corner or edge of the pipe fryum is broken"},
        {"different colour spot", "a spot of a different colour sits on the pipe fryum"},
        {"middle breakage", "the pipe fryum is broken through the middle"},
        {"small scratches", "small scratches mark the pipe fryum"},
        {"stuck together", "two pipe fryums are stuck together"}}},
  };
  return table;
}

}  // namespace

std::optional<AbnormalPrompts> builtin_prompts(std::string_view class_name) {
  for (const auto& c : library()) {
    if (c.name != class_name) continue;
    AbnormalPrompts prompts;
    prompts.class_name = std::string(class_name);
    for (const auto& e : c.entries) {
      prompts.keywords.emplace_back(e.keyword);
      prompts.sentences.emplace_back(e.sentence);
    }
    prompts.settings = {{"source", "builtin"}};
    return prompts;
  }
  return std::nullopt;
}

std::vector<std::string> builtin_classes() {
  std::vector<std::string> names;
  for (const auto& c : library()) names.emplace_back(c.name);
  return names;
}

}  // namespace iadgpt::anomaly
