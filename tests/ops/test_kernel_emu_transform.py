"""tests/ops/kernel_emu/transform.py, the rewrite of CUDA sources for the host build: launches, __shared__
declarations, inline PTX and __launch_bounds__ become calls into the shim, line numbers stay, comments and
strings are left alone, and what it cannot take is an error that names the file and line."""
from pathlib import Path

import pytest

from kernel_emu import transform as tf

ROOT = Path(__file__).resolve().parents[2]


def rewrite(src):
    out, rep = tf.transform_text(src, "k.cu")
    assert out.count("\n") == src.count("\n")  # line numbers stay
    return out, rep


def test_launch_with_template_arguments_and_every_config_form():
    out, rep = rewrite("void f() {\n  kern<T, 4><<<dim3(2, 3), 128, 0, stream>>>(a,\n      b);\n"
                       "  other<<<n, 32>>>(x);\n}\n")
    assert rep.launches == 2
    assert ('::emu::launch("kern<T, 4>", dim3(dim3(2, 3)), dim3(128), 0, stream, __FILE__, __LINE__, '
            '[&]() { kern<T, 4>(a,       b); })') in out
    assert '::emu::launch("other", dim3(n), dim3(32), 0, nullptr, __FILE__, __LINE__, [&]() { other(x); })' in out
    assert "<<<" not in out


def test_comments_and_strings_are_not_rewritten():
    src = ('// k<<<1, 2>>>(x) in a comment\n/* __shared__ float s[4]; */\nconst char* s = "k<<<1, 2>>>(x)";\n'
           "const char c = '\"';\n")
    out, rep = rewrite(src)
    assert out == src and rep.launches == 0 and rep.shared == 0


def test_shared_declarations_become_block_storage():
    out, rep = rewrite("__global__ void k() {\n  __shared__ __align__(16) T As[kBM][kLds];\n"
                       "  __shared__ double red[4][BN], mean[BN];\n  __shared__ int flag;\n"
                       "  extern __shared__ float dyn[];\n}\n")
    assert rep.shared == 5
    assert ('static char emu_shkey_As; auto& As = ::emu::shared<T[kBM][kLds]>(&emu_shkey_As, 16, "As");') in out
    assert "auto& red = ::emu::shared<double[4][BN]>(&emu_shkey_red, 0" in out
    assert "auto& mean = ::emu::shared<double[BN]>(&emu_shkey_mean, 0" in out
    assert "auto& flag = ::emu::shared<int>(&emu_shkey_flag, 0" in out
    assert "float* dyn = ::emu::dynamic_shared<float>();" in out
    assert "__shared__" not in out


def test_inline_ptx_becomes_a_call_of_the_instruction():
    src = ('  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "\n'
           '               "{%8,%9}, {%0,%1,%2,%3};\\n"\n'
           '               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])\n'
           '               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));\n'
           '  asm("cvt.rna.tf32.f32 %0, %1;\\n" : "=r"(r) : "f"(x));\n')
    out, rep = rewrite(src)
    assert rep.asm == 2
    assert ("::emu::ptx::mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(__FILE__, __LINE__, "
            "{&(d[0]), &(d[1]), &(d[2]), &(d[3])}, {(a[0]), (a[1]), (a[2]), (a[3])}, {(b[0]), (b[1])}, "
            "{(d[0]), (d[1]), (d[2]), (d[3])});") in out
    assert "::emu::ptx::cvt_rna_tf32_f32(__FILE__, __LINE__, &(r), (x));" in out


@pytest.mark.parametrize("src,words", [
    ('asm("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d) '
     ': "r"(p));\n', "'ldmatrix.sync.aligned.m8n8.x4.shared.b16' is not emulated"),
    ('asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x)) + 1;\n', "not followed by ';'"),
    ('asm("cvt.rna.tf32.f32 %0, %1; cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));\n', "several instructions"),
    ('asm("cvt.rna.tf32.f32 %1, %0;" : "=r"(r) : "f"(x));\n', "is not an output"),
    ("__shared__ float* p;\n", "not supported"),
])
def test_what_the_emulator_cannot_take_is_an_error_naming_the_line(src, words):
    with pytest.raises(tf.TransformError, match="k.cu") as e:
        tf.transform_text("\n" + src, "k.cu")
    assert words in str(e.value)


def test_launch_bounds_add_a_check_at_the_top_of_the_body():
    out, rep = rewrite("template <int N>\n__global__ void __launch_bounds__(kThreads)\nk(int a,\n  int b) {\n"
                       "  body();\n}\n__global__ void __launch_bounds__(64) decl(int);\n")
    assert rep.bounds == 1  # the declaration has no body
    assert "k(int a,\n  int b) { ::emu::launch_bounds(static_cast<long>(kThreads), __FILE__, __LINE__);" in out


def test_shared_bounds_may_be_constant_expressions_but_initializers_are_refused():
    out, rep = rewrite("  __shared__ float Ds[kPix == 2 ? kBM : 1][BN + 1];\n  __shared__ int n[a <= b ? 2 : 1];\n")
    assert rep.shared == 2
    assert 'auto& Ds = ::emu::shared<float[kPix==2?kBM:1][BN+1]>(&emu_shkey_Ds, 0, "Ds");' in out
    assert "auto& n = ::emu::shared<int[a<=b?2:1]>" in out
    with pytest.raises(tf.TransformError, match="not supported"):
        tf.transform_text("__shared__ int flag = 0;\n", "k.cu")


def test_kernel_code_is_left_as_it_is_beyond_the_syntactic_rewrites():
    # no source edits: a template (mma_k_tile's one form for every type) comes out unchanged
    src = "template <int BN, typename T>\n__device__ __forceinline__ void mma_k_tile(const T (*As)[kLds]) {}\n"
    out, rep = rewrite(src)
    assert out == src and (rep.launches, rep.shared, rep.asm, rep.bounds) == (0, 0, 0, 0)


def test_the_project_sources_transform_and_name_every_launch(tmp_path):
    log = tf.transform_tree(ROOT / "csrc", tmp_path / "src")
    assert log[-1].startswith("total:")
    launches = sum(p.read_text().count("<<<") for p in (ROOT / "csrc").rglob("*.cu"))
    assert f"total: {launches} launches" in log[-1]
    for p in (tmp_path / "src").rglob("*.cu"):
        text = p.read_text()
        assert "<<<" not in text and "__shared__" not in text and "asm(" not in text and "asm volatile" not in text
        assert text.count("\n") == (ROOT / "csrc" / p.relative_to(tmp_path / "src")).read_text().count("\n")
