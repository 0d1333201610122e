//! The scene (a spinning cube and a sphere on a lawn, lit, seen by a camera that renders into
//! an image the model can read) and the view (that image, the answer below it, detection boxes
//! over it).

use bevy::camera::RenderTarget;
use bevy::core_pipeline::tonemapping::Tonemapping;
use bevy::prelude::*;
use bevy::render::render_resource::{TextureFormat, TextureUsages};

use crate::settings::Settings;
use crate::{FRAME, VIEW};

/// The scene camera's target: what a capture reads.
#[derive(Resource)]
pub struct Frame(pub Handle<Image>);

/// Headless: the view's own target, which `--screenshot` writes.
#[derive(Resource)]
pub struct ViewImage(pub Handle<Image>);

#[derive(Component)]
pub struct Spinning;

#[derive(Component)]
pub struct AnswerText;

/// The scene's image on screen; detection boxes are its children.
#[derive(Component)]
pub struct SceneView;

#[derive(Component)]
pub struct DetectionBox;

pub fn setup_scene(
    mut commands: Commands,
    settings: Res<Settings>,
    mut images: ResMut<Assets<Image>>,
    mut meshes: ResMut<Assets<Mesh>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let frame = images.add(target_image(FRAME));
    commands.insert_resource(Frame(frame.clone()));
    spawn_world(&mut commands, &mut meshes, &mut materials, &frame);
    let camera = spawn_view_camera(&mut commands, &mut images, settings.headless);
    spawn_view(&mut commands, camera, frame);
}

/// An image a camera renders into and a capture can copy from (COPY_SRC: the model reads the
/// scene's, a screenshot the view's).
fn target_image((width, height): (u32, u32)) -> Image {
    let mut image = Image::new_target_texture(width, height, TextureFormat::Rgba8UnormSrgb, None);
    image.texture_descriptor.usage |= TextureUsages::COPY_SRC;
    image
}

/// The 3D scene, its camera rendering into `frame`.
fn spawn_world(
    commands: &mut Commands,
    meshes: &mut Assets<Mesh>,
    materials: &mut Assets<StandardMaterial>,
    frame: &Handle<Image>,
) {
    commands.spawn((
        Mesh3d(meshes.add(Plane3d::default().mesh().size(12.0, 12.0))),
        MeshMaterial3d(materials.add(Color::srgb(0.3, 0.55, 0.25))),
    ));
    commands.spawn((
        Mesh3d(meshes.add(Cuboid::new(1.2, 1.2, 1.2))),
        MeshMaterial3d(materials.add(Color::srgb(0.85, 0.2, 0.15))),
        Transform::from_xyz(-1.1, 0.6, 0.0),
        Spinning,
    ));
    commands.spawn((
        Mesh3d(meshes.add(Sphere::new(0.7).mesh().uv(32, 18))),
        MeshMaterial3d(materials.add(Color::srgb(0.2, 0.3, 0.85))),
        Transform::from_xyz(1.3, 0.7, 0.4),
    ));
    commands.spawn((
        DirectionalLight {
            illuminance: 8_000.0,
            shadow_maps_enabled: true,
            ..default()
        },
        Transform::from_xyz(3.0, 6.0, 4.0).looking_at(Vec3::ZERO, Vec3::Y),
    ));
    commands.spawn((
        Camera3d::default(),
        Camera {
            clear_color: ClearColorConfig::Custom(Color::srgb(0.55, 0.7, 0.95)),
            ..default()
        },
        RenderTarget::Image(frame.clone().into()),
        // The default (TonyMcMapface) needs lookup tables this build leaves out.
        Tonemapping::Reinhard,
        Transform::from_xyz(0.0, 2.6, 5.5).looking_at(Vec3::new(0.0, 0.5, 0.0), Vec3::Y),
    ));
}

/// The camera of the view: in a window, on the window; headless, on an image of its own that
/// --screenshot writes.
fn spawn_view_camera(
    commands: &mut Commands,
    images: &mut Assets<Image>,
    headless: bool,
) -> Entity {
    let camera = commands
        .spawn((
            Camera2d,
            Camera {
                order: 1,
                clear_color: ClearColorConfig::Custom(Color::srgb(0.08, 0.08, 0.1)),
                ..default()
            },
        ))
        .id();
    if headless {
        let image = images.add(target_image(VIEW));
        commands
            .entity(camera)
            .insert(RenderTarget::Image(image.clone().into()));
        commands.insert_resource(ViewImage(image));
    }
    camera
}

/// The view: the scene's image, the answer below it.
fn spawn_view(commands: &mut Commands, camera: Entity, frame: Handle<Image>) {
    commands
        .spawn((
            Node {
                width: percent(100),
                height: percent(100),
                flex_direction: FlexDirection::Column,
                align_items: AlignItems::Center,
                padding: UiRect::all(px(12)),
                row_gap: px(10),
                ..default()
            },
            UiTargetCamera(camera),
        ))
        .with_children(|root| {
            root.spawn((
                ImageNode::new(frame),
                Node {
                    width: px(FRAME.0),
                    height: px(FRAME.1),
                    ..default()
                },
                SceneView,
            ));
            root.spawn((
                Text::new("loading the model..."),
                TextFont::from_font_size(16.0),
                // Answers such as `<loc0469><loc0392>...` have no spaces to break at.
                TextLayout::linebreak(LineBreak::AnyCharacter),
                TextColor(Color::WHITE),
                Node {
                    max_width: px(FRAME.0),
                    ..default()
                },
                AnswerText,
            ));
        });
}

pub fn spin(mut cubes: Query<&mut Transform, With<Spinning>>) {
    // A fixed step per frame rather than per second: a headless run shows the same frames on
    // every machine.
    for mut t in &mut cubes {
        t.rotate_y(0.05);
    }
}
