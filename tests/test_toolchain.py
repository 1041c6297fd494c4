"""Ties that survive the rest of the toolchain: checkpoints, copies, compile, func, export, DDP."""

import copy
import io

import pytest
import torch
from _distributed_worker import run_ranks
from torch import nn
from torch.nn.utils import parametrize

import tietorch as tt


def make_net(tie_fn=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    tt.register_tie(net[0], "weight", tt.KernelSymmetry("D4"))
    tt.register_tie(net[2], "weight", tie_fn or tt.SymmetricFlip(sign=-1))
    return net


def ties_hold(net):
    w0, w2 = net[0].weight, net[2].weight
    return bool(
        torch.equal(w0, w0.rot90(1, (2, 3)))
        and torch.equal(w0, w0.flip(3))
        and torch.equal(w2, -w2.transpose(0, 1).flip(2, 3))
    )


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))


# ------------------------------------------------------------------------------ checkpoints


def test_safetensors_round_trip(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    net = make_net()
    path = tmp_path / "model.safetensors"
    safetensors.save_file(net.state_dict(), str(path))
    other = make_net(tt.SymmetricFlip(sign=-1))
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_state_dict(safetensors.load_file(str(path)))
    assert torch.equal(other(X), net(X)) and ties_hold(other)


def test_dense_checkpoint_loads_through_the_helper_with_errors_reported():
    torch.manual_seed(3)
    dense = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    tied = make_net()
    with pytest.raises(
        ValueError, match=r"'0\.weight' is tied .* does not satisfy that tie.*load_dense_state_dict"
    ):
        tied.load_state_dict(dense.state_dict())
    errors = tt.load_dense_state_dict(tied, dense.state_dict())
    assert set(errors) == {"0.weight", "2.weight"} and all(0 < e < 1 for e in errors.values())
    assert ties_hold(tied)
    w = dense[2].weight.detach()
    assert torch.allclose(tied[2].weight, (w - w.transpose(0, 1).flip(2, 3)) / 2, atol=1e-7)
    w0 = dense[0].weight.detach()
    orbit = [w0.rot90(k, (2, 3)) for k in range(4)]
    orbit += [o.flip(3) for o in orbit]
    assert torch.allclose(tied[0].weight, sum(orbit) / 8, atol=1e-7)
    assert torch.equal(tied[0].bias, dense[0].bias)
    # a dense checkpoint that already satisfies the ties reloads with zero error
    again = tt.load_dense_state_dict(make_net(), tt.dense_state_dict(tied))
    assert all(e < 1e-6 for e in again.values())


def test_dense_state_dict_loads_into_the_untied_model():
    tied = make_net()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    plain.load_state_dict(tt.dense_state_dict(tied))
    assert torch.equal(plain(X), tied(X))
    assert "0.parametrizations.weight.original" in tied.state_dict()  # model unchanged


def test_whole_model_torch_save_works_and_stays_tied():
    net = make_net()
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(X), net(X)) and ties_hold(loaded)
    for a, b in zip(net.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)  # the free vectors come back bitwise
    assert parametrize.is_parametrized(loaded[2], "weight")


def test_torch_save_of_a_lambda_tie_says_what_to_do():
    net = make_net(tt.Tie.from_relation(lambda o, i, a, b: (i, o, -1 - a, -1 - b), sign=-1))
    with pytest.raises(TypeError, match=r"not picklable.*state_dict\(\)"):
        torch.save(net, io.BytesIO())


def test_deepcopy_is_independent_under_cache_and_removal():
    net = make_net(tt.Tie.from_relation(lambda o, i, a, b: (i, o, -1 - a, -1 - b), sign=-1))
    clone = copy.deepcopy(net)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)

    def rebuilt(conv):  # the weight recomputed from the module's own free vector
        plist = conv.parametrizations.weight
        return plist[0](plist.original)

    with parametrize.cached():
        _ = net[2].weight  # fill the cache for the original first
        assert torch.equal(clone[2].weight, rebuilt(clone[2]))
        assert not torch.equal(clone[2].weight, net[2].weight)
    tt.remove_tie(clone[2], "weight")
    assert type(clone[2]) is nn.Conv2d
    assert parametrize.is_parametrized(net[2], "weight") and ties_hold(net)  # original intact
    net(X).sum().backward()
    clone2 = copy.deepcopy(net)
    assert torch.equal(clone2(X), net(X))


def test_deepcopy_of_a_model_with_a_state_dict_hook_checks_its_own_ties():
    net = make_net()
    clone = copy.deepcopy(net)
    tt.remove_tie(clone[2], "weight")
    clone.load_state_dict(clone.state_dict())  # the copy's hook must not look at the original
    net.load_state_dict(net.state_dict())


def test_optimizer_state_resumes_exactly():
    def train(net, opt, steps):
        for k in range(steps):
            opt.zero_grad()
            net(X * (1 + k)).square().mean().backward()
            opt.step()

    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    train(net, opt, 3)
    saved = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, saved)
    train(net, opt, 3)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    resumed = make_net()
    resumed.load_state_dict(state["model"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=0.01)
    opt2.load_state_dict(state["opt"])
    train(resumed, opt2, 3)
    for a, b in zip(net.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------- compile, func, dtypes


def test_compile_fullgraph_matches_eager():
    net = make_net()
    compiled = torch.compile(net, fullgraph=True)
    y_eager, y_comp = net(X), compiled(X)
    assert torch.allclose(y_eager, y_comp, atol=1e-5)
    g_eager = torch.autograd.grad(y_eager.square().sum(), list(net.parameters()))
    g_comp = torch.autograd.grad(compiled(X).square().sum(), list(net.parameters()))
    for a, b in zip(g_eager, g_comp, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_functional_call_with_free_vectors_and_per_sample_gradients():
    from torch.func import functional_call, grad, vmap

    net = make_net()
    params = {k: v.detach() for k, v in net.named_parameters()}
    key = "2.parametrizations.weight.original"
    assert key in params
    shifted = {**params, key: params[key] + 1}
    out = functional_call(net, shifted, (X,))
    with torch.no_grad():
        net[2].parametrizations.weight.original.add_(1)
    assert torch.allclose(out, net(X))

    def loss(p, x):
        return functional_call(net, p, (x[None],)).square().mean()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, X)
    assert per_sample[key].shape == (X.shape[0], params[key].numel())
    full = grad(loss)(params, X[0])
    assert torch.allclose(per_sample[key][0], full[key], atol=1e-6)


def test_autocast_bf16_keeps_ties_exact_and_trains():
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(X)
            assert out.dtype == torch.bfloat16
            assert ties_hold(net)
            loss = out.float().square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert ties_hold(net) and losses[-1] < losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_moves_the_maps_and_trains():
    net = make_net().cuda()
    p = net[2].parametrizations.weight[0]
    assert p.index.is_cuda and p.sign.is_cuda
    opt = torch.optim.Adam(net.parameters())
    for _ in range(3):
        opt.zero_grad()
        net(X.cuda()).square().mean().backward()
        opt.step()
    assert ties_hold(net)
    net.half()
    assert ties_hold(net) and p.sign.dtype == torch.float16


# -------------------------------------------------------------------------------- export


def test_export_after_bake_and_without():
    net = make_net()
    expected = net(X)
    unbaked = torch.export.export(net, (X,))
    assert torch.allclose(unbaked.module()(X), expected, atol=1e-6)
    baked = torch.export.export(tt.bake(copy.deepcopy(net)), (X,))
    assert torch.allclose(baked.module()(X), expected, atol=1e-6)
    assert not any("index" in name for name in baked.state_dict)  # a plain graph


def test_onnx_export_after_bake():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    net = tt.bake(make_net())
    program = torch.onnx.export(net, (X,), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    (out,) = session.run(None, {session.get_inputs()[0].name: X.numpy()})
    assert torch.allclose(torch.from_numpy(out), net(X), atol=1e-5)


# ---------------------------------------------------------------------------- distributed


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory):
    return run_ranks("single", tmp_path_factory.mktemp("single"), world=1)[0]


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp_meta"])
def test_distributed_training_matches_one_process_on_the_full_batch(
    mode, tmp_path, single_process_reference
):
    ranks = run_ranks(mode, tmp_path)
    reference = single_process_reference["state"]
    for result in ranks:
        assert result["holds"]  # the constraint holds exactly on every rank
        assert result["state"].keys() == reference.keys()
        for key, value in reference.items():
            assert torch.allclose(result["state"][key], value, atol=1e-6), key
    if mode == "ddp":
        assert all(r["synced_buffers"] == 0 for r in ranks)  # no index maps re-broadcast
