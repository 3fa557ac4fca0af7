// Bindings and loads of the model-op shaders: a = binding 2, b = 3, c = 4.
layout(std430, set = 0, binding = 2) buffer BA { uint w[]; } ba;
layout(std430, set = 0, binding = 3) buffer BB { uint w[]; } bb;
layout(std430, set = 0, binding = 4) buffer BC { uint w[]; } bc;

float fa(uint i) { return uintBitsToFloat(ba.w[i]); }
float fb(uint i) { return uintBitsToFloat(bb.w[i]); }

// Element e of a weight array in ba that starts at word `off`, by wtype
// (0 F32, 1 F16, 2 BF16; 16-bit types pack two elements per word, low first).
float weight_a(uint off, uint e)
{
    if (pc.wtype == 0u)
        return uintBitsToFloat(ba.w[off + e]);
    uint h = (ba.w[off + (e >> 1)] >> (16u * (e & 1u))) & 0xffffu;
    return pc.wtype == 1u ? unpackHalf2x16(h).x : uintBitsToFloat(h << 16);
}
