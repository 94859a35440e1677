"""Times the PyTorch reference codecs for bench_codec.py; runs inside the reference virtualenv
(built by ../shared/bench-ref/setup_venvs.sh: torch 2.9.1, audiolm-pytorch 2.4.0, encodec 0.1.1).

It is a long-lived worker so that bench_codec.py can interleave its own timings with these
(this machine's speed drifts 15-30% within minutes). One JSON request per stdin line:

    {"build": NAME, "kind": "audiolm_train" | "audiolm_infer" | "encodec_infer", "config": {...}}
        builds the model (random init, nothing downloaded), runs one untimed warm-up call,
        replies {"params": {...}}.
    {"time": NAME}   runs the case once, replies {"seconds": wall seconds}.

Each reply is one JSON line on stdout; anything else the libraries print goes to stderr.

The audiolm training step is `SoundStreamTrainer.train_step` without its accumulation and
EMA: the generator loss (recon + multi-spectral mel + adversarial + feature matching +
commitment) backward, clip to 0.5, Adam step; then the discriminator losses backward and
Adam steps of the STFT and the 3 multi-scale discriminators (no gradient penalty).
"""

import torch  # noqa: E402
from ref_worker import nparams, serve  # first: sets the environment before torch is imported


def audiolm_model(cfg: dict):
    from audiolm_pytorch import SoundStream

    return SoundStream(
        channels=cfg["channels"],
        strides=tuple(cfg["strides"]),
        channel_mults=tuple(cfg["channel_mults"]),
        codebook_dim=cfg["codebook_dim"],
        codebook_size=cfg["codebook_size"],
        rq_num_quantizers=cfg["num_levels"],
        target_sample_hz=cfg["sample_rate"],
        use_local_attn=cfg.get("use_local_attn", False),
    )


def build_audiolm_train(cfg: dict):
    from audiolm_pytorch.optimizer import get_optimizer

    m = audiolm_model(cfg)
    wave = torch.randn(cfg["batch"], int(cfg["sample_rate"] * cfg["seconds"])) * 0.1
    m.train()
    for rvq in m.rq.rvqs:  # k-means-initialise every codebook before timing (as bench-ref does)
        rvq.quantize_dropout = False
    with torch.no_grad():
        m(wave, return_loss_breakdown=True)
    for rvq in m.rq.rvqs:
        rvq.quantize_dropout = True
    opt_g = get_optimizer(m.non_discr_parameters(), lr=2e-4, wd=0.0)
    opt_stft = get_optimizer(m.stft_discriminator.parameters(), lr=2e-4, wd=0.0)
    opt_msd = [get_optimizer(d.parameters(), lr=2e-4, wd=0.0) for d in m.discriminators]

    def step():
        loss, _ = m(wave, return_loss_breakdown=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt_g.step()
        opt_g.zero_grad()
        opt_stft.zero_grad()
        for o in opt_msd:
            o.zero_grad()
        for _, d_loss in m(wave, return_discr_loss=True, return_discr_losses_separately=True):
            d_loss.backward(retain_graph=True)
        opt_stft.step()
        for o in opt_msd:
            o.step()

    params = {
        "generator": nparams(m) - nparams(m.stft_discriminator) - sum(nparams(d) for d in m.discriminators),
        "discriminators": nparams(m.stft_discriminator) + sum(nparams(d) for d in m.discriminators),
    }
    return step, params


def build_audiolm_infer(cfg: dict):
    m = audiolm_model(cfg).eval()
    x = torch.randn(1, int(cfg["sample_rate"] * cfg["seconds"])) * 0.1

    def roundtrip():
        with torch.inference_mode():
            m.decode_from_codebook_indices(m(x, return_codes_only=True))

    gen = nparams(m) - nparams(m.stft_discriminator) - sum(nparams(d) for d in m.discriminators)
    return roundtrip, {"generator": gen}


def build_encodec_infer(cfg: dict):
    from encodec import EncodecModel

    m = EncodecModel.encodec_model_24khz(pretrained=False)
    m.set_target_bandwidth(cfg["bandwidth_kbps"])
    m.eval()
    x = torch.randn(1, 1, int(m.sample_rate * cfg["seconds"])) * 0.1

    def roundtrip():
        with torch.inference_mode():
            m.decode(m.encode(x))

    return roundtrip, {"generator": nparams(m)}


BUILDERS = {
    "audiolm_train": build_audiolm_train,
    "audiolm_infer": build_audiolm_infer,
    "encodec_infer": build_encodec_infer,
}


def main() -> None:
    torch.manual_seed(0)
    # the same quantizer-dropout draws on every timed call
    serve(lambda req: BUILDERS[req["kind"]](req["config"]), build_seed=0, time_seed=1000)


if __name__ == "__main__":
    main()
