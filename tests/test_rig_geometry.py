"""DiffusionRig's geometry and sampler against analytic answers: the spec's acceptance checks 1-14 and 17-19 on a
synthetic FLAME with the real array shapes, an icosphere and hand-placed triangles."""
import math

import pytest
import torch

from anybody.rig.buffers import (SH_CONSTANTS, crop_to_image, flame_albedo, physical_buffers, project,
                                 sh_shading, stack_buffers, vertex_normals)
from anybody.rig.codes import CODE_SIZE, FaceCode, centred_vertices, edited, with_shape
from anybody.rig.flame import Flame, FlameArrays, rodrigues
from anybody.rig.raster import rasterize
from anybody.rig.sample import ddim_sample, respaced_timesteps
from anybody.train.diffusion import linear_alphas_cumprod, p2_weight

N_VERTS, N_FACES = 5023, 9976


def synthetic_flame(seed: int = 0) -> FlameArrays:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(N_VERTS, 5, generator=g)
    regressor = torch.rand(5, N_VERTS, generator=g)
    return FlameArrays(
        v_template=torch.randn(N_VERTS, 3, generator=g) * 0.1,
        faces=torch.randint(0, N_VERTS, (N_FACES, 3), generator=g),
        shapedirs=torch.randn(N_VERTS, 3, 400, generator=g) * 1e-3,
        posedirs=torch.randn(N_VERTS, 3, 36, generator=g) * 1e-3,
        j_regressor=regressor / regressor.sum(1, keepdim=True),
        weights=weights / weights.sum(1, keepdim=True),
        parents=torch.tensor([-1, 0, 1, 1, 1]),
        static_lmk_faces=torch.randint(0, N_FACES, (51,), generator=g),
        static_lmk_bary=torch.softmax(torch.randn(51, 3, generator=g), 1))


@pytest.fixture(scope="module")
def flame():
    return Flame(synthetic_flame())


def zeros(b=1):
    return torch.zeros(b, 100), torch.zeros(b, 50), torch.zeros(b, 6)


def test_rest_pose_is_the_template_and_zero_rotation_the_identity(flame):
    assert torch.equal(rodrigues(torch.zeros(3)), torch.eye(3))
    v = flame(*zeros())
    assert (v[0] - flame.v_template).abs().max() < 1e-6


def test_shape_and_expression_are_linear_in_the_deca_columns(flame):
    arrays = synthetic_flame()
    g = torch.Generator().manual_seed(1)
    shape, exp = torch.randn(1, 100, generator=g), torch.randn(1, 50, generator=g)
    v = flame(shape, exp, torch.zeros(1, 6))
    chosen = torch.cat([arrays.shapedirs[..., :100], arrays.shapedirs[..., 300:350]], -1)
    expected = arrays.v_template + torch.einsum("vck,k->vc", chosen, torch.cat([shape, exp], 1)[0])
    assert (v[0] - expected).abs().max() < 1e-5


def test_global_rotation_turns_the_head_rigidly_about_the_root(flame):
    r = torch.tensor([[0.3, -0.2, 0.5]])
    v = flame(torch.zeros(1, 100), torch.zeros(1, 50), torch.cat([r, torch.zeros(1, 3)], 1))[0]
    root = flame.j_regressor[0] @ flame.v_template
    expected = (flame.v_template - root) @ rodrigues(r[0]).T + root
    assert (v - expected).abs().max() < 1e-5
    pick = torch.randperm(N_VERTS)[:200]
    exact = "donot_use_mm_for_euclid_dist"
    before = torch.cdist(flame.v_template[pick], flame.v_template[pick], compute_mode=exact)
    assert (torch.cdist(v[pick], v[pick], compute_mode=exact) - before).abs().max() < 1e-5


def test_rodrigues_is_a_rotation():
    rotations = rodrigues(torch.randn(16, 3))
    assert (rotations.transpose(1, 2) @ rotations - torch.eye(3)).abs().max() < 1e-5
    assert (torch.linalg.det(rotations) - 1).abs().max() < 1e-5
    quarter = rodrigues(torch.tensor([0, 0, math.pi / 2]))
    assert torch.allclose(quarter @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)


def test_pose_correctives_ignore_the_global_rotation(flame):
    """Only the root turns: the posed shape before skinning (pose correctives of joints 1-4) stays at rest, so the
    result is exactly the rigid turn of the template — while a jaw turn does move the correctives."""
    rot = torch.tensor([[0.4, 0.1, -0.3, 0, 0, 0]])
    v = flame(torch.zeros(1, 100), torch.zeros(1, 50), rot)[0]
    root = flame.j_regressor[0] @ flame.v_template
    assert (v - ((flame.v_template - root) @ rodrigues(rot[0, :3]).T + root)).abs().max() < 1e-5
    jaw = flame(torch.zeros(1, 100), torch.zeros(1, 50), torch.tensor([[0, 0, 0, 0.3, 0, 0]]))[0]
    assert (jaw - flame.v_template).abs().max() > 1e-3


def icosphere(subdivisions: int = 3, radius: float = 0.8):
    t = (1 + 5 ** 0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [torch.tensor(v, dtype=torch.float64) for v in verts]
    for _ in range(subdivisions):
        cache, new_faces = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                verts.append((verts[a] + verts[b]) / 2)
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    v = torch.stack(verts)
    v = (v / v.norm(dim=1, keepdim=True) * radius).float()
    f = torch.tensor(faces)
    corners = v[f]
    outward = (torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
               * corners.mean(1)).sum(1) > 0
    f = torch.where(outward[:, None], f, f[:, [0, 2, 1]])
    return v, f


def test_vertex_normals_of_a_sphere_point_outward():
    v, f = icosphere()
    n = vertex_normals(v[None], f)[0]
    assert ((n * v / 0.8).sum(1) > 0.99).all()
    assert (n.norm(dim=1) - 1).abs().max() < 1e-5


def full_frame():
    """The DECA crop's transform when the crop is the whole 256 photo: crop NDC == image NDC."""
    return torch.diag(torch.tensor([224 / 256, 224 / 256, 1.0]))[None]


def render_sphere(light: torch.Tensor):
    v, f = icosphere()
    placed = crop_to_image(project(v[None], torch.tensor([[1.0, 0, 0]])), full_frame())
    uv = torch.full((len(v), 2), 0.5)
    return physical_buffers(placed, v[None], f, uv, f, torch.ones(1, 3, 8, 8), light[None])


def test_sphere_buffers_have_unit_normals_facing_the_camera():
    buffers = render_sphere(torch.zeros(9, 3))
    alpha, normal = buffers["alpha"][0, 0], buffers["normal"][0]
    covered = alpha > 0
    length = normal.norm(dim=0)
    assert (length[covered] >= 0.95).all() and (length[covered] <= 1 + 1e-5).all()
    assert (normal[:, ~covered] == 0).all()
    assert abs(covered.sum().item() / (math.pi * 0.4 ** 2 * 256 ** 2) - 1) < 0.02
    assert torch.allclose(normal[:, 128, 128], torch.tensor([0.0, 0, 1]), atol=0.02)


def test_a_square_covers_exactly_its_pixels():
    square = torch.tensor([[[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.5, 0.5, 1.0], [-0.5, 0.5, 1.0]]])
    fragments = rasterize(square, torch.tensor([[0, 1, 2], [0, 2, 3]]), 256, 256)
    covered = fragments.covered[0]
    assert covered.sum() == 16384
    rows, cols = covered.nonzero(as_tuple=True)
    assert rows.min() == 64 and rows.max() == 191 and cols.min() == 64 and cols.max() == 191
    assert (fragments.bary[0][covered].sum(-1) - 1).abs().max() < 1e-6


def test_orientation_and_depth_order():
    corner = torch.tensor([[[0.9, -0.9, 1.0], [0.5, -0.9, 1.0], [0.9, -0.5, 1.0]]])
    rows, cols = rasterize(corner, torch.tensor([[0, 1, 2]]), 256, 256).covered[0].nonzero(as_tuple=True)
    assert len(rows) and rows.min() < 30 and cols.max() > 225 and rows.max() < 70 and cols.min() > 185
    # two overlapping world triangles: the one nearer the camera (larger world z) must win
    tri = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]])
    world = torch.cat([torch.cat([tri, torch.full((3, 1), 0.1)], 1), torch.cat([tri, torch.full((3, 1), 0.3)], 1)])
    fragments = rasterize(project(world[None], torch.tensor([[1.0, 0, 0]])) + torch.tensor([0, 0, 10.0]),
                          torch.tensor([[0, 1, 2], [3, 4, 5]]), 64, 64)
    assert (fragments.face[fragments.covered] == 1).all()


def test_orthographic_projection_and_crop_mapping():
    p = project(torch.tensor([[[0.1, 0.1, 0.3]]]), torch.tensor([[2.0, 0, 0]]))
    assert torch.allclose(p, torch.tensor([[[0.2, -0.2, -0.6]]]))
    points = torch.rand(1, 10, 3) * 2 - 1
    assert (crop_to_image(points, full_frame()) - points).abs().max() < 1e-5


def test_spherical_harmonics_closed_forms():
    assert torch.allclose(torch.tensor(SH_CONSTANTS), torch.tensor(
        [0.28209479, 1.02332671, 1.02332671, 1.02332671, 0.85808553, 0.85808553, 0.85808553, 0.42904277, 0.24770796]))
    n = torch.nn.functional.normalize(torch.randn(1, 3, 8, 8), dim=1)
    for band, expected in ((0, 0.28209479 * torch.ones_like(n[:, 2])), (3, 1.02332671 * n[:, 2]),
                           (8, 0.24770796 * (3 * n[:, 2] ** 2 - 1))):
        light = torch.zeros(1, 9, 3)
        light[0, band] = torch.tensor([0.5, 1.0, 2.0])
        shading = sh_shading(n, light)
        for c, level in enumerate((0.5, 1.0, 2.0)):
            assert torch.allclose(shading[:, c], level * expected, atol=1e-6)
    code = torch.arange(CODE_SIZE, dtype=torch.float32)[None]
    light = FaceCode.split(code).light[0]
    assert all(light[k, c] == 209 + 3 * k + c for k in range(9) for c in range(3))


def test_rendered_buffer_is_albedo_times_shading_on_the_sphere():
    light = torch.zeros(9, 3)
    light[0] = 1.0
    buffers = render_sphere(light)
    covered = buffers["alpha"][0, 0] > 0
    assert torch.allclose(buffers["rendered"][0][:, covered], torch.full((3, int(covered.sum())), 0.28209479))
    assert (buffers["rendered"][0][:, ~covered] == 0).all()
    assert stack_buffers(buffers).shape == (1, 9, 256, 256)


def test_flame_texture_at_zero_code_is_the_mean_flipped_and_halved():
    side = 512
    mean = torch.rand(side * side * 3) * 255
    albedo = flame_albedo(mean, torch.zeros(side * side * 3, 2), torch.zeros(2, 2))
    expected = (mean / 255).view(side, side, 3).permute(2, 0, 1)[[2, 1, 0], ::2, ::2]
    assert albedo.shape == (2, 3, 256, 256) and torch.equal(albedo[1], expected)
    small = 16
    mean, basis, tex = torch.rand(small * small * 3), torch.randn(small * small * 3, 60), torch.randn(1, 50)
    expected = ((mean + basis[:, :50] @ tex[0]) / 255).view(small, small, 3).permute(2, 0, 1)[[2, 1, 0], ::2, ::2]
    assert torch.allclose(flame_albedo(mean, basis, tex)[0], expected, atol=1e-6)


def test_code_split_order_and_round_trip():
    code = torch.arange(CODE_SIZE, dtype=torch.float32)[None]
    parts = FaceCode.split(code)
    starts = [parts.shape[0, 0], parts.tex[0, 0], parts.exp[0, 0], parts.pose[0, 0], parts.cam[0, 0],
              parts.light[0, 0, 0]]
    assert [int(s) for s in starts] == [0, 100, 150, 200, 206, 209]
    assert torch.equal(parts.join(), code)
    with pytest.raises(ValueError, match="236"):
        FaceCode.split(torch.zeros(1, 200))


def test_edits_take_only_their_parameters_from_the_target():
    g = torch.Generator().manual_seed(3)
    source = FaceCode.split(torch.randn(1, CODE_SIZE, generator=g))
    target = FaceCode.split(torch.randn(1, CODE_SIZE, generator=g))
    light = edited(source, target, "light")
    assert torch.equal(light.light, target.light) and torch.equal(light.exp, source.exp)
    exp = edited(source, target, "exp")
    assert torch.equal(exp.exp, target.exp) and torch.equal(exp.pose[:, 3:], target.pose[:, 3:])
    assert torch.equal(exp.pose[:, :3], source.pose[:, :3])
    pose = edited(source, target, "pose")
    assert torch.equal(pose.pose[:, :3], target.pose[:, :3]) and torch.equal(pose.cam, source.cam)
    assert torch.equal(edited(source, target, "latent").join(), source.join())
    with pytest.raises(ValueError, match="light, exp, pose, latent"):
        edited(source, target, "hair")


def test_edited_head_keeps_the_source_centre(flame):
    g = torch.Generator().manual_seed(4)
    source = FaceCode.split(torch.randn(2, CODE_SIZE, generator=g) * 0.2)
    target = FaceCode.split(torch.randn(2, CODE_SIZE, generator=g) * 0.2)
    mean_shape = torch.randn(1, 100, generator=g) * 0.2
    for mode in ("pose", "exp"):
        edit = with_shape(edited(source, target, mode), mean_shape)
        moved = centred_vertices(flame, source, edit)
        own = flame.ffhq_centre(flame(source.shape, source.exp, source.pose))
        assert (flame.ffhq_centre(moved) - own).abs().max() < 1e-6
        assert (flame.ffhq_centre(flame(edit.shape, edit.exp, edit.pose)) - own).abs().max() > 1e-4


def test_schedule_and_p2_weight():
    a = linear_alphas_cumprod()
    assert abs(a[0].item() - 0.9999) < 1e-12 and abs(a[999].item() - 4.0358e-5) < 1e-8
    assert (p2_weight(a) - (1 - a)).abs().max() < 1e-6


def test_ddim20_returns_the_clean_image_under_an_oracle():
    assert respaced_timesteps() == list(range(950, -1, -50))
    alphas = linear_alphas_cumprod().float()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    seen = []

    def oracle(x_t, t):
        seen.append(int(t[0]))
        a = alphas[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    out = ddim_sample(oracle, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert seen == list(range(950, -1, -50))
    assert (out - x0).abs().max() < 1e-4


def test_deca_crop_square_from_a_detector_box_and_from_68_landmarks():
    from anybody.rig.crop import crop_transform

    box = torch.tensor([[50.0, 60.0, 150.0, 160.0]])
    corners = torch.tensor([[37.5, 59.5, 1.0], [37.5, 184.5, 1.0], [162.5, 59.5, 1.0]])  # side 125, centre y +12
    mapped = corners @ crop_transform(box, "detector")[0].T
    assert torch.allclose(mapped[:, :2], torch.tensor([[0.0, 0.0], [0.0, 223.0], [223.0, 0.0]]), atol=1e-4)
    side = int(100 * 1.1 * 1.25)  # 137
    corner = torch.tensor([100 - side / 2, 110 - side / 2, 1.0]) @ crop_transform(box, "landmarks68")[0].T
    assert torch.allclose(corner[:2], torch.zeros(2), atol=1e-4)
    with pytest.raises(ValueError, match="detector, landmarks68"):
        crop_transform(box, "mtcnn")


def test_deca_crop_warp_samples_pixel_centres():
    from anybody.rig.crop import warp_crop

    photo = torch.rand(1, 3, 256, 256)
    shift = torch.tensor([[[1.0, 0, -10], [0, 1, -20], [0, 0, 1]]])  # crop pixel = photo pixel - (10, 20)
    crop = warp_crop(photo, shift)
    assert torch.allclose(crop, photo[:, :, 20:244, 10:234], atol=1e-5)
    outside = warp_crop(photo, torch.tensor([[[1.0, 0, 100], [0, 1, 0], [0, 0, 1]]]))
    assert (outside[..., :99] == 0).all()
