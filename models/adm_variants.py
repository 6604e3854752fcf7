"""The released ADM models of openai/guided-diffusion (Dhariwal & Nichol, 2021) as data: the architecture of each
(configs/adm_imagenet.py, adm_upsampler.py and adm_classifier.py build their configs from these tables; the
converter, models/adm_convert.py, checks a file's attention layout against them). Sources: the MODEL_FLAGS and
CLASSIFIER_FLAGS of guided-diffusion's README and its script_util (create_model, sr_create_model,
create_classifier)."""

# resolution -> the U-Net fields of the class-conditional ImageNet model. num_heads 4 is guided-diffusion's default,
# used where num_head_channels is -1 (the 128 model).
ARCHITECTURES = {
    64:
        dict(base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3, num_head_channels=64, num_heads=4,
             dropout=0.1),
    128:
        dict(base_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2, num_head_channels=-1, num_heads=4,
             dropout=0.0),
    256:
        dict(base_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, num_head_channels=64, num_heads=4,
             dropout=0.0),
    512:
        dict(base_channels=256, channel_mult=(0.5, 1, 1, 2, 2, 4, 4), num_res_blocks=2, num_head_channels=64,
             num_heads=4, dropout=0.0),
}
SCHEDULES = {64: 'cosine', 128: 'linear', 256: 'linear', 512: 'linear'}  # also the classifiers' at that resolution
QKV_ORDERS = {64: 'new', 128: 'legacy', 256: 'legacy', 512: 'legacy'}  # use_new_attention_order: the 64x64 model only

# configs/adm_upsampler.py's argument (low resolution _ image size) -> what differs between the super-resolution
# models; both use sr_create_model's default (legacy) qkv order.
UPSAMPLERS = {
    '64_256': dict(low_res_size=64, image_size=256, attn_resolutions=(32, 16, 8), num_head_channels=-1, num_heads=4),
    '128_512': dict(low_res_size=128, image_size=512, attn_resolutions=(32, 16), num_head_channels=64, num_heads=4),
}

# The noisy classifiers: --classifier_depth by resolution (4 for the 64x64 classifier, else the default 2); all
# attend with 64 channels per head in the default (legacy) qkv order.
CLASSIFIER_DEPTHS = {64: 4, 128: 2, 256: 2, 512: 2}
CLASSIFIER_HEAD_CHANNELS = 64
