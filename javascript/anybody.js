// Anybody tab: start the webui's progress bar (with live previews) for a training run, like its own Train tab.
// ``prefix`` names the section's elements: <prefix>_output, _gallery, _progress, _result.
function anybody_track(prefix, args) {
    gradioApp().querySelector('#' + prefix + '_result').innerHTML = '';
    var id = randomId();
    requestProgress(id, gradioApp().getElementById(prefix + '_output'), gradioApp().getElementById(prefix + '_gallery'), function() {}, function(progress) {
        gradioApp().getElementById(prefix + '_progress').innerHTML = progress.textinfo || '';
    });
    var res = Array.from(args);
    res[0] = id;
    return res;
}

function anybody_start_training() {
    return anybody_track('anybody_train', arguments);
}

function anybody_start_celeb_basis() {
    return anybody_track('anybody_cb', arguments);
}

function anybody_start_magicapture() {
    return anybody_track('anybody_mc', arguments);
}

function anybody_start_rig() {
    return anybody_track('anybody_rig', arguments);
}
